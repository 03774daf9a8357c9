"""The data sets bundled with vestige, installed as the package ``vestige_data`` (this folder): concept
files with verified QA, needle-in-a-haystack text and needles, probe data sets, and the unlearning table.
Read them through ``probes.data.data_path``."""
