"""The audit on the demo: it names the seed's cause, and nothing on the clean levels."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import OPTForCausalLM

from nansearch.audit import SEVERITIES, Audit, read_audit, run_audit
from nansearch.cli.main import build_parser
from nansearch.config import load_config
from nansearch.demo import demo_checkpoint
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner
from tests.conftest import DEMO, REPO, demo_overrides


def main(argv: list[str]) -> int:
    """The command line as ``nansearch`` runs it, minus its process-wide logging setup."""
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def demo():
    cfg = load_config(DEMO)
    factors = build_factors(cfg)
    runner = TrialRunner(cfg, factors, build_target(cfg.target))
    return run_audit(cfg, factors, runner), runner


def test_flags_the_blip2_checkpoint_loaded_as_opt(demo):
    audit, runner = demo
    [finding] = audit.about("checkpoint=blip2-full")
    assert (finding.severity, finding.check) == ("error", "checkpoint.wrapped")
    # all language-model weights missing
    assert "loaded as OPTForCausalLM, 37 of its 37 weights are missing (100% of" in finding.found
    # keys found under language_model.
    assert "all 37 missing weights are in the checkpoint under 'language_model.'" in finding.found
    assert "config.json names Blip2ForConditionalGeneration (model_type blip-2)" in finding.found
    # load the language-only checkpoint instead, or strip the prefix
    assert finding.fix.startswith("Load the language-only checkpoint instead")
    assert "this sweep's level opt-lm is one" in finding.fix
    assert "k.removeprefix('language_model.')" in finding.fix

    # each claim is true of the model the trials copy ...
    loaded = runner.cache.peek("demo:blip2-full")
    names = {n for n, _ in loaded.model.named_parameters(remove_duplicate=False)}
    assert names == set(loaded.missing_keys)
    # ... and the fix works: stripped, the BLIP-2 file loads into OPT as the trained OPT
    state = load_file(demo_checkpoint("blip2-full") / "model.safetensors")
    stripped = {
        k.removeprefix("language_model."): v
        for k, v in state.items()
        if k.startswith("language_model.")
    }
    opt = OPTForCausalLM(loaded.model.config)
    result = opt.load_state_dict(stripped, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and result.unexpected_keys == []
    trained = runner.cache.peek("demo:opt-lm").model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in stripped.items())


def test_no_false_alarm_on_the_clean_checkpoint_and_batch(demo):
    audit, _ = demo
    assert audit.about("checkpoint=opt-lm") == []
    assert audit.about("batch=clean") == []
    # every finding is about a level that holds a real cause (or the searched lr range)
    by_subject = {(f.subject, f.check) for f in audit.findings}
    assert by_subject == {
        ("checkpoint=blip2-full", "checkpoint.wrapped"),
        ("dtype=fp16", "config.fp16-adam-eps"),
        ("dtype=fp16", "config.fp16-no-scaler"),
        ("lr", "config.lr-range"),
        ("batch=labels-all-ignored", "batch.labels-ignored"),
        ("batch=padded-row", "batch.masked-row"),
    }
    assert [f.severity for f in audit.findings] == sorted(
        (f.severity for f in audit.findings), key=SEVERITIES.index
    )


def test_cli_prints_findings_writes_audit_json_and_is_strict_on_request(tmp_path, capsys):
    assert main(["audit", DEMO, "study=a", "out=runs"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("audit: 3 errors, 2 warnings, 1 note")
    assert "ERROR   checkpoint.wrapped  [checkpoint=blip2-full]" in printed
    assert "written to runs/a/audit.json" in printed

    data = json.loads((tmp_path / "runs/a/audit.json").read_text())
    assert set(data) == {"findings", "seconds"} and data["seconds"] > 0
    for finding in data["findings"]:
        assert set(finding) == {"severity", "check", "subject", "found", "why", "fix"}
        assert finding["severity"] in SEVERITIES and all(
            isinstance(v, str) for v in finding.values()
        )
    assert read_audit(tmp_path / "runs/a/audit.json") == Audit.from_json(data)

    assert main(["audit", DEMO, "study=a", "out=runs", "--strict"]) == 1
    capsys.readouterr()


def test_a_sweep_of_clean_levels_only_has_no_finding(tmp_path, capsys):
    sweep_file = tmp_path / "clean.yaml"
    sweep_file.write_text(
        f"include: [{REPO}/configs/opt-target.yaml]\n"
        "study: clean\n"
        "factors:\n"
        "  checkpoint: {levels: {opt-lm: 'demo:opt-lm'}}\n"
        "  dtype: {levels: [fp32, bf16, amp-fp16, amp-bf16]}\n"
        "  lr: {low: 1.0e-5, high: 1.0e-2}\n"
        "  batch: {levels: [clean, vocab-edge-ids, long-sequence]}\n"
    )
    assert main(["audit", str(sweep_file), "--strict"]) == 0
    assert capsys.readouterr().out.startswith("audit: no findings")
    assert read_audit(tmp_path / "runs/clean/audit.json").findings == []


def test_sweep_audits_first_and_prints_the_findings_before_the_progress_bar(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nansearch", "sweep", DEMO, *demo_overrides(trials=2, steps=1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout
    out = proc.stdout
    assert 0 <= out.index("checkpoint.wrapped") < out.index("2/2")
    assert "audit     runs/t/audit.json" in out
    audit = read_audit(tmp_path / "runs/t/audit.json")
    assert [f.check for f in audit.about("checkpoint=blip2-full")] == ["checkpoint.wrapped"]
