"""`unipetl count` end to end: exact paper counts offline, JSON output, bad input → exit 2."""

from __future__ import annotations

import json

import pytest

from unipetl.search.cli import main


def run_json(capsys, *argv: str) -> dict:
    assert main(["count", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_count_mam_on_bart_large(capsys) -> None:
    out = run_json(capsys, "--model", "bart-large", "--preset", "mam:l=30,r=512,s=4")
    assert out["paper_params"] == 27_377_664
    assert out["base_params"] == 406_291_456
    assert out["paper_percent"] == pytest.approx(100 * 27_377_664 / 406_291_456)
    assert out["trainable_params"] >= out["paper_params"]
    assert out["trainable_percent"] == pytest.approx(100 * out["trainable_params"] / 406_291_456)


@pytest.mark.parametrize(
    ("model", "preset", "paper"),
    [
        ("bart-large", "pfeiffer:r=600", 29_491_200),
        ("bart-large", "prefix:l=200", 14_745_600),
        ("bart-large", "lora:r=200", 29_491_200),
        ("bart-large", "pa-ffn:r=1024", 50_331_648),
        ("roberta-base", "mam:l=16,r=16", 589_824),
        ("facebook/bart-large", "prefix:l=1", 73_728),
    ],
)
def test_count_paper_table(capsys, model: str, preset: str, paper: int) -> None:
    assert run_json(capsys, "--model", model, "--preset", preset)["paper_params"] == paper


def test_count_variant_file_and_local_model_dir(capsys, tmp_path) -> None:
    from unipetl.spaces.testing import tiny_config

    tiny_config("bart").save_pretrained(tmp_path / "tiny-bart")
    vf = tmp_path / "v.json"
    vf.write_text(json.dumps({"modules": [{"site": "cross_attn", "kind": "heads", "size": 3, "function": "softmax", "composition": "gated"}]}))
    out = run_json(capsys, "--model", str(tmp_path / "tiny-bart"), "--variant", str(vf))
    assert out["paper_params"] == 2 * 3 * 32 * 2  # 2·l·d × 2 decoder layers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "bart-large", "--preset", "mamm"], "Did you mean: mam?"),
        (["--model", "bart-larg", "--preset", "mam"], "Did you mean: bart-large?"),
        (["--model", "bart-large", "--preset", "lora:r=0"], "`r` should be a positive integer, got '0'"),
        (["--model", "roberta-base", "--preset", "lora:r=-1"], "`r` should be a positive integer, got '-1'"),
        (["--model", "/nonexistent/dir", "--preset", "lora"], "neither a built-in card nor a local directory"),
    ],
)
def test_count_bad_input_exits_2(capsys, argv: list[str], message: str) -> None:
    assert main(["count", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_count_bad_variant_files(capsys, tmp_path) -> None:
    cases = {
        "unknown_key.json": ('{"modules": [], "bitfitt": true}', "Did you mean: bitfit?"),
        "bad_site.json": ('{"modules": [{"site": "cross_attn", "kind": "adapter", "size": 4}]}', "site 'cross_attn' does not exist"),
        "bad_method.json": ('{"modules": [{"site": "ffn", "kind": "adaptr", "size": 4}]}', "Did you mean: adapter?"),
        "broken.json": ('{"modules": [', "malformed"),
    }
    for name, (text, message) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        assert main(["count", "--model", "roberta-base", "--variant", str(f)]) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
