"""Bundled study files (`{task}-{model}.yaml`), installed as `unipetl.studies` (package data)."""
