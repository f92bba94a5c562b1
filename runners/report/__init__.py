"""`clusterprobe report`: one self-contained HTML page of an eval run or of a study.

Modules: ``page`` (the HTML: inline PNGs, tables, no network), ``figures`` (pure
drawing, arrays in and matplotlib Figures out), ``run_report`` (an eval run, read back
through ``evalrun.stored``), ``study_report`` (an Optuna study and its trials' runs).
"""

DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `clusterprobe ui` serves: a study's links
