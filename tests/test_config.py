"""The typed config: one source of defaults, every key checked at load with its path."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from interest.engine.config import DEFAULT_PATH, check_layer, load_config, typed_config
from interest.engine.errors import ConfigError, InterestError
from interest.tools import serve

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def toml_paths(table, prefix=""):
    out = set()
    for key, value in table.items():
        if isinstance(value, dict):
            out |= toml_paths(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_defaults_load_and_callers_keep_the_nested_dict():
    config = load_config()
    assert config["limits"]["max_k"] == 1000
    assert config["interest"]["weights"]["purchase"] == 5.0
    assert typed_config(config).limits.max_k == 1000
    load_config(ROOT / "configs" / "gpu.toml")          # the shipped overlay is valid


def test_default_toml_and_the_schema_name_the_same_keys():
    with DEFAULT_PATH.open("rb") as fh:
        defaults = tomllib.load(fh)
    check_layer(defaults, "default.toml", complete=True)   # every declared key has a default
    assert toml_paths(defaults) == toml_paths(load_config())


def test_config_error_is_part_of_the_tree():
    assert issubclass(ConfigError, InterestError)


@pytest.mark.parametrize("text, message", [
    ("[limts]\nmax_k = 5\n", r"unknown section \[limts\] \(did you mean limits\?\)"),
    ("[store]\nsnyc = false\n", r"unknown key store\.snyc \(did you mean store\.sync\?\)"),
    ("[interest.weights]\nteleport = 1.0\n", r"unknown key interest\.weights\.teleport"),
    ('[limits]\nmax_batch_events = "lots"\n',
     r"limits\.max_batch_events must be an integer, got str 'lots'"),
    ("[store]\nsync = 1\n", r"store\.sync must be a boolean \(true/false\), got int 1"),
    ("[runtime]\nworkers = 0\n", r"runtime\.workers must be at least 1, got 0"),
    ("[runtime]\nidle_seconds = -1.0\n", r"runtime\.idle_seconds must be greater than 0"),
    ("[runtime]\nidle_seconds = nan\n", r"runtime\.idle_seconds must be a finite number"),
    ("[limits]\nmax_id_chars = 100000\n", r"limits\.max_id_chars must be at most 400"),
    ("[service]\nfeeds = [1]\n", r"service\.feeds must be a list of strings"),
    ("[interest]\nweights = 3\n", r"interest\.weights must be a table, got int 3"),
    ("[store]\nmap_size_mb = 512\nmax_map_size_mb = 256\n",
     r"store\.max_map_size_mb \(256\) is smaller than store\.map_size_mb \(512\)"),
    ("[security]\ncurve = true\n", r"security\.server_secret_key is required"),
])
def test_a_bad_file_is_rejected_with_the_key_path(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_a_bad_file_names_itself_in_one_line(tmp_path):
    path = write(tmp_path, "[store]\nsnyc = false\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_ints_are_accepted_for_floats_and_become_floats(tmp_path):
    config = load_config(write(tmp_path, "[runtime]\nidle_seconds = 5\n"))
    assert config["runtime"]["idle_seconds"] == 5.0
    assert isinstance(config["runtime"]["idle_seconds"], float)


def test_overrides_are_checked_too():
    assert load_config(runtime={"workers": 4})["runtime"]["workers"] == 4
    with pytest.raises(ConfigError, match=r"override: runtime\.workers must be at least 1"):
        load_config(runtime={"workers": 0})
    with pytest.raises(ConfigError, match=r"override: unknown section \[limts\]"):
        load_config(limts={"max_k": 3})
    with pytest.raises(ConfigError, match=r"override: limits\.max_batch_events must be an integer"):
        load_config(limits={"max_batch_events": "lots"})
    with pytest.raises(ConfigError, match=r"override: store must be a table"):
        load_config(store=5)


def test_missing_file_and_toml_syntax_error_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2") as err:
        load_config(write(tmp_path, "[store]\nsync = = true\n"))
    assert "\n" not in str(err.value)


def test_check_config_prints_ok_or_the_error(tmp_path, capsys):
    assert serve.main(["--check-config"]) == 0
    assert capsys.readouterr().out.strip() == "config OK"
    assert serve.main(["--check-config", "--config", str(write(tmp_path, "[limts]\n"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown section [limts]" in err and len(err.splitlines()) == 1


def test_serve_with_a_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = write(tmp_path, '[runtime]\nworkers = 0\n')
    proc = subprocess.run([sys.executable, "-m", "interest.tools.cli", "serve", "--config", str(bad),
                           "--data", str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"interest serve: bad config: {bad}: runtime.workers must be at least 1, got 0"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()          # nothing started
