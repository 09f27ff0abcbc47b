"""The README's real-MusicGen workflow, command by command, on a tiny real-format MusicGen and a tiny CLAP.

    .venv/bin/python -m pytest -q tests/experiments/test_workflow.py

The commands are read from README.md ("Real MusicGen, command by command") and app/README.md and
run as written, in a temporary working directory, with only these substitutions: the hub ids become
the tiny models built here, the 10 s clips become 1 s, and the training runs get small-size overrides
appended (TRAIN_OVERRIDES: a few steps of a few short sequences on the CPU). So the documented commands
cannot drift from what works: generate (gamma 3) -> train quality and diversity -> merge -> generate
-> evaluate (FAD / KAD against reference audio, CLAP, held-out EnCodec diversity) -> the app, served and
called with gradio_client, its session evaluated -> the export and the merge in plain transformers.
"""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from musicgen_cfg.cli import main

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Real MusicGen, command by command"
BASE_ID, CLAP_ID = "facebook/musicgen-small", "laion/clap-htsat-unfused"
PROMPTS = ["sad piano melody", "a joyful jig with drums", "calm ambient song with bass"]
TRAIN_OVERRIDES = ["--steps", "2", "--num-frames", "25", "--prompts-per-step", "2", "--generations", "3",
                   "--grad-accum", "1", "--device", "cpu", "--bf16", "false", "--threads", "1", "--warmup", "1",
                   "--heldout-prompts", "1", "--checkpoint-every", "2", "--eval-every", "2", "--tensorboard", "false"]


def readme_blocks(path: Path, section: str) -> dict[str, list[str]]:
    """The first bash and python code blocks after `section`: bash as command lines (comments dropped)."""
    text = path.read_text()
    text = text[text.index(section):]
    bash = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    return {"bash": [line for line in bash.splitlines() if line.strip() and not line.startswith("#")],
            "python": python}


def substitute(line: str, tiny: dict[str, str]) -> list[str]:
    """A README command line -> argv for musicgen_cfg.cli.main, with the tiny stand-ins."""
    for real, stand_in in tiny.items():
        line = line.replace(real, stand_in)
    argv = shlex.split(line)
    assert argv[0] == "musicgen-cfg", line
    argv = argv[1:]
    if argv[0] == "train":
        argv += TRAIN_OVERRIDES + ["--model", tiny[BASE_ID]]
        config = yaml.safe_load((ROOT / argv[argv.index("--config") + 1]).read_text())
        if str(config.get("embedder", "")).startswith("clap:"):  # the config's hub CLAP -> the tiny one
            argv += ["--embedder", f"clap:{tiny[CLAP_ID]}"]
        argv[argv.index("--config") + 1] = str(ROOT / argv[argv.index("--config") + 1])
    return argv


def run(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{argv}: {captured.err}"
    return captured.out + captured.err


def manifest(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.slow  # the README's workflow, every command, end to end
def test_readme_workflow_end_to_end(tmp_path, monkeypatch, capsys):
    from gradio_client import Client
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    import app.ui
    from musicgen_cfg.tiny import save_tiny_clap, save_tiny_musicgen

    tiny = {BASE_ID: str(save_tiny_musicgen(tmp_path / "tiny-musicgen")), CLAP_ID: str(save_tiny_clap(tmp_path / "clap")),
            "--duration 10": "--duration 1"}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (work / "reference_audio").mkdir()
    t = np.arange(16000) / 16000
    for k, freq in enumerate((220, 330, 440, 660)):  # "real music": tones and a noisy chord
        sf.write(work / "reference_audio" / f"ref{k}.wav", 0.3 * np.sin(2 * np.pi * freq * t), 16000)
    sf.write(work / "reference_audio" / "noise.flac", 0.1 * np.random.default_rng(0).normal(size=16000), 16000)

    commands = readme_blocks(ROOT / "README.md", SECTION)
    by_step = commands["bash"]
    assert [shlex.split(line)[1] for line in by_step] == ["generate", "train", "train", "merge", "generate",
                                                          "evaluate", "app"]

    # 1. the base with CFG
    run(capsys, substitute(by_step[0], tiny))
    base = manifest(work / "runs" / "base-cfg3")
    assert len(base) == 12 and {e["sampling"]["guidance_scale"] for e in base} == {3.0}
    assert base[0]["teacher_guidance_scale"] is None and base[0]["model"] == tiny[BASE_ID]

    # 2. train both: each run ends with a hub-ready export in RUN/final
    for step in (1, 2):
        run(capsys, substitute(by_step[step], tiny))
    for run_dir, beta in (("q", 0.0), ("d", 15.0)):
        final = work / "runs" / run_dir / "final"
        files = {p.name for p in final.iterdir()}
        assert {"model.safetensors", "config.json", "generation_config.json", "processor_config.json",
                "tokenizer.json", "README.md", "manifest.json"} <= files
        assert not files & {"optimizer.safetensors", "trainer_state.json"}
        generation = json.loads((final / "generation_config.json").read_text())
        assert generation["guidance_scale"] == 1.0
        assert generation["musicgen_cfg"] | {"base_model": None} == {
            "teacher_guidance_scale": 3.0, "beta": beta, "lambda": None, "base_model": None}
        card = (final / "README.md").read_text()
        assert f"| beta (diversity reward weight) | {beta} |" in card and "| training steps | 2 |" in card
        assert "| KL to the CFG teacher on held-out prompts (nats per sequence) |" in card
        assert card.startswith("---\nlicense: other\n")  # a local tiny base: its licence is unknown

    # 3. merge the run directories (= their final exports)
    out = run(capsys, substitute(by_step[3], tiny))
    assert "runs/q is a training run: using its final export runs/q/final" in out
    merged = work / "runs" / "merged"
    assert not {p.name for p in merged.iterdir()} & {"optimizer.safetensors", "trainer_state.json", "manifest.json"}
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["guidance_scale"] == 1.0 and generation["musicgen_cfg"]["lambda"] == 0.5
    assert generation["musicgen_cfg"]["beta"] == [0.0, 15.0]
    card = (merged / "README.md").read_text()
    assert "weight merge at lambda = 0.5" in card and "| teacher CFG gamma | 3.0 |" in card

    # 4. generate with the merged model: gamma 1, and the merge's provenance in every line
    run(capsys, substitute(by_step[4], tiny))
    merged_gen = manifest(work / "runs" / "merged-gen")
    assert all(e["sampling"]["guidance_scale"] == 1.0 and e["beta"] == [0.0, 15.0] and e["lambda"] == 0.5
               and e["teacher_guidance_scale"] == 3.0 for e in merged_gen)

    # 5. evaluate both runs: FAD / KAD against the reference audio, CLAP, held-out EnCodec diversity
    run(capsys, substitute(by_step[5], tiny))
    for name in ("base-cfg3", "merged-gen"):
        result = json.loads((work / "runs" / name / "metrics.json").read_text())
        metrics = result["metrics"]
        for metric in ("fad_encodec-emb", "kad_encodec-emb", "fad_clap", "kad_clap", "clap_score", "quality",
                       "diversity_heldout", "diversity_clap", "lm_passes_per_second"):
            assert metrics[metric]["mean"] is not None, (name, metric)
        assert result["components"]["heldout_embedder"]["spec"] == "encodec-emb"
        assert result["components"]["reference"]["num_files"] == 5
    cost = {name: json.loads((work / "runs" / name / "metrics.json").read_text())["metrics"]["lm_passes_per_second"]
            ["mean"] for name in ("base-cfg3", "merged-gen")}
    assert cost["base-cfg3"] == pytest.approx(2 * cost["merged-gen"])  # CFG's two passes, removed
    assert (work / "results" / "metrics.csv").is_file()

    # 6. the app, as in README.md and app/README.md, served and called with gradio_client
    app_line = by_step[6]
    assert " ".join(app_readme_command().split()) == app_line
    served = {}
    original = app.ui.launch

    def launch_and_return(engine, host, port, **kwargs):  # the real launch, without blocking the test
        served.update(engine=engine, blocks=original(engine, host, port, **{**kwargs, "prevent_thread_lock": True}))
        return served["blocks"]

    monkeypatch.setattr(app.ui, "launch", launch_and_return)
    argv = substitute(app_line, tiny)
    assert "--no-browser" in argv
    out = run(capsys, argv)
    assert "runs/d is a training run: using its final export runs/d/final" in out
    blocks, engine = served["blocks"], served["engine"]
    try:
        client = Client(blocks.local_url, verbose=False)
        audio, _, base_audio, summary = client.predict(prompt=PROMPTS[0], lam=0.5, variations=2, duration=1.0,
                                                       seed=0, compare=True, api_name="/generate")
        assert len(audio) == 2 and len(base_audio) == 2 and summary["beta"] == [0.0, 15.0]
        info = client.predict(api_name="/info")
        assert info["served"]["lambda"] == 0.5 and info["served"]["teacher_guidance_scale"] == 3.0
        assert info["quality"]["beta"] == 0.0 and info["diversity"]["beta"] == 15.0
    finally:
        blocks.close()
    (session,) = engine.out_root.glob("session-*")
    run(capsys, ["evaluate", str(session), "--reference-dir", "reference_audio", "--bootstrap", "20"])
    evaluated = sorted(p.parent.name for p in session.glob("*/metrics.json"))
    assert len(evaluated) == 2 and evaluated[0].startswith("base-cfg-g3") and evaluated[1].startswith("merged-lam0.5")

    # 7. plain transformers: the export and the merge load and generate; the README's pipeline lines run
    for directory in (work / "runs" / "q" / "final", merged):
        model = MusicgenForConditionalGeneration.from_pretrained(directory)
        processor = AutoProcessor.from_pretrained(directory)
        inputs = processor(text=[PROMPTS[0]], padding=True, return_tensors="pt")
        codes = model.generate(**inputs, do_sample=True, max_new_tokens=8)
        assert codes.shape[0] == 1 and model.generation_config.guidance_scale == 1.0
    for directory in ("runs/merged", "runs/q/final"):  # the README's lines, then the same on an export
        namespace = {}
        exec(commands["python"].replace('"max_new_tokens": 256', '"max_new_tokens": 16').replace(
            '"runs/merged"', f'"{directory}"'), namespace)  # relative to work/
        assert namespace["out"]["sampling_rate"] == 16000 and namespace["out"]["audio"].size > 0


def app_readme_command() -> str:
    """The `musicgen-cfg app` command of app/README.md (continuation lines joined)."""
    text = (ROOT / "app" / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    (line,) = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("musicgen-cfg app")]
    return line
