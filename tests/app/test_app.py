"""The Gradio demo through its API: a launched app on tiny models, driven by gradio_client.

    .venv/bin/python -m pytest -q tests/app/test_app.py

Quality and diversity endpoints are two tiny random real-MusicGen checkpoints with different seeds,
so every lam gives different weights; the reward embedder is a random contrastive one. One slow test
serves the shipped default-quality and default-diversity models, whose sets also get note-level
diversity and whose measurements (/measure) also get the judges' quality.
"""

import json

import numpy as np
import pytest
import torch
from conftest import free_port
from gradio_client import Client
from safetensors.torch import load_file

from app.requests import parse_request
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.evaluate_runs import check_entry

PROMPT = "a calm folk song on the piano"
PARAMETER = "decoder.lm_heads.0.weight"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    from musicgen_cfg.tiny import save_tiny_musicgen
    from rl.embedders import ContrastiveEmbedderConfig, ContrastiveMusicEmbedder

    root = tmp_path_factory.mktemp("app")
    quality = save_tiny_musicgen(root / "quality", seed=0)
    diversity = save_tiny_musicgen(root / "diversity", seed=1)
    torch.manual_seed(0)
    ContrastiveMusicEmbedder(ContrastiveEmbedderConfig(channels=(8, 16), embedding_dim=16)).save(root / "embedder")
    return root, quality, diversity


@pytest.fixture(scope="module")
def served(endpoints):
    from app.engine import Endpoint, Engine
    from app.ui import launch

    root, quality, diversity = endpoints
    engine = Engine.load(Endpoint("quality", str(quality), str(quality)),
                         Endpoint("diversity", str(diversity), str(diversity)),
                         Endpoint("base", str(quality), str(quality)), str(root / "embedder"), None, "cpu",
                         root / "out", [], lam=0.5, log=lambda message: None)
    blocks = launch(engine, "127.0.0.1", free_port(), prevent_thread_lock=True)
    yield engine, Client(blocks.local_url, verbose=False)
    blocks.close()


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    """The shipped default-quality and default-diversity models with the shipped reward embedder, no base."""
    from app.engine import Endpoint, Engine
    from app.ui import launch

    engine = Engine.load(Endpoint("quality", "default-quality", "default-quality"),
                         Endpoint("diversity", "default-diversity", "default-diversity"), None, "default", None, "cpu",
                         tmp_path_factory.mktemp("default-app"), [], log=lambda message: None)
    blocks = launch(engine, "127.0.0.1", free_port(), prevent_thread_lock=True, log=lambda message: None)
    yield engine, Client(blocks.local_url, verbose=False)
    blocks.close()


def endpoint_tensor(directory, name=PARAMETER) -> torch.Tensor:
    return load_file(str(directory / "model.safetensors"))[name]


def served_tensor(engine, name=PARAMETER) -> torch.Tensor:
    return engine.model.lm.state_dict()[name].detach().cpu()


def manifest_entries(engine) -> list[dict]:
    """Every manifest line of the one session (one client = one session), oldest first (by seq: `created` has
    one-second resolution), with its folder."""
    (session,) = engine.out_root.glob("session-*")
    entries = [{**json.loads(line), "folder": manifest.parent} for manifest in session.glob("*/manifest.jsonl")
               for line in manifest.read_text().splitlines()]
    assert len({e["seq"] for e in entries}) == len(entries)  # distinct across the session's folders
    return sorted(entries, key=lambda e: e["seq"])


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_generate_change_lambda_generate_again(served, endpoints):
    engine, client = served
    _, quality, diversity = endpoints
    q, d = endpoint_tensor(quality), endpoint_tensor(diversity)
    assert not torch.equal(q, d)

    audio, images, base_audio, summary = client.predict(prompt=PROMPT, lam=0.0, variations=3, duration=1.0, seed=7,
                                                        api_name="/generate")
    assert len(audio) == 3 and len(images) == 3 and not base_audio
    assert all(path.endswith(".wav") for path in audio) and all(path.endswith(".png") for path in images)
    assert summary["seeds"] == [7, 8, 9] and summary["lambda"] == 0.0 and summary["time_s"] > 0
    assert 0.0 <= summary["diversity"] <= 2.0 and summary["diversity_note"] is None
    assert summary["note_diversity"] is None and "no symbolic codes" in summary["note_diversity_note"]
    assert torch.equal(served_tensor(engine), q)

    audio, images, _, summary = client.predict(prompt=PROMPT, lam=0.75, variations=2, duration=1.0, seed=7,
                                               api_name="/generate")
    assert len(audio) == 2 and len(images) == 2 and summary["lambda"] == 0.75
    assert torch.allclose(served_tensor(engine), torch.lerp(q, d, 0.75), atol=1e-6)
    assert not torch.allclose(served_tensor(engine), q)

    entries = manifest_entries(engine)
    assert [(e["lambda"], e["seed"]) for e in entries] == [(0.0, 7), (0.0, 8), (0.0, 9), (0.75, 7), (0.75, 8)]
    assert len({e["folder"] for e in entries}) == 2  # one folder per lambda (model) and sampling setting
    for entry in entries:
        check_entry(entry, "demo")  # the record `generate` writes and `evaluate` reads
        assert (entry["folder"] / entry["file"]).is_file() and (entry["folder"] / entry["image_file"]).is_file()
        assert entry["prompt"] == PROMPT and entry["prompt_index"] == 0 and entry["sampling"]["guidance_scale"] == 1.0
        assert entry["sampling"]["duration"] == 1.0 and entry["model"] == str(quality)
        assert entry["endpoints"]["quality"]["model_sha256"] == engine.quality.provenance["model_sha256"]
        assert entry["endpoints"]["diversity"]["model_sha256"] == engine.diversity.provenance["model_sha256"]
        assert entry["beta"] == [None, None] and entry["teacher_guidance_scale"] is None  # undistilled endpoints
    assert engine.quality.provenance["model_sha256"] != engine.diversity.provenance["model_sha256"]
    # model_sha256 is the served theta(lam): the quality weights at lam 0, a new hash at 0.75
    assert entries[0]["model_sha256"] == engine.quality.provenance["model_sha256"] != entries[3]["model_sha256"]
    # Same seed, other weights: the music changed with lam.
    first, again = (np.load(entries[i]["folder"] / entries[i]["codes_file"]) for i in (0, 3))
    assert not np.array_equal(first, again)

    result = client.predict(lam=0.25, api_name="/set_lambda")
    assert result["lambda"] == 0.25
    assert torch.allclose(served_tensor(engine), torch.lerp(q, d, 0.25), atol=1e-6)
    info = client.predict(api_name="/info")
    assert info["lambda"] == 0.25 and info["served"]["lambda"] == 0.25
    assert set(info["served"]) == {"model", "model_sha256", "beta", "lambda", "teacher_guidance_scale"}


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_measure_two_lambdas_gives_cis_and_writes_no_files(served):
    engine, client = served
    before = sorted(engine.out_root.rglob("*"))
    first, second = (client.predict(lam=lam, prompts=2, variations=2, duration=0.5, seed=5, api_name="/measure")
                     for lam in (0.0, 1.0))
    for result, lam in ((first, 0.0), (second, 1.0)):
        assert result["lambda"] == lam == result["served"]["lambda"] and result["prompts"] == list(engine.examples[:2])
        for name in ("diversity", "degenerate_rate"):
            stats = result["metrics"][name]
            assert stats["num_prompts"] == 2 and stats["ci_low"] - 1e-12 <= stats["mean"] <= stats["ci_high"] + 1e-12
            assert stats["mean"] == pytest.approx(np.mean(result["per_prompt"][name]))
        assert set(result["not_measured"]) == {"note_diversity", "quality"}  # real MusicGen: no symbolic codes
    assert first["served"]["model_sha256"] == engine.quality.provenance["model_sha256"]
    assert second["served"]["model_sha256"] == engine.diversity.provenance["model_sha256"]
    assert first["per_prompt"]["diversity"] != second["per_prompt"]["diversity"]  # other weights, same seeds
    assert sorted(engine.out_root.rglob("*")) == before


@pytest.mark.slow  # loads the shipped quality and diversity models (MiniLM text encoder) and the judges
def test_default_world_shows_note_level_diversity_and_measures_the_trade_off(default_world):
    from app.engine import NOTE_MEASURES
    from musicgen_cfg.sampler import SamplingConfig
    from rl.note_diversity import group_note_diversity
    from rl.reward import reward_gate

    engine, client = default_world
    *_, summary = client.predict(prompt=engine.examples[0], lam=0.5, variations=3, duration=2, seed=0,
                                 api_name="/generate")
    assert summary["note_diversity_note"] is None and summary["diversity_note"] is None
    assert all(0.0 <= summary[name] <= 1.0 for name in NOTE_MEASURES) and 0.0 <= summary["diversity"] <= 2.0
    distances = [summary[name] for name in NOTE_MEASURES[1:]]
    assert summary["note_diversity"] == pytest.approx(np.mean(distances), abs=1e-4)

    results = [client.predict(lam=lam, prompts=2, variations=3, duration=2, seed=0, api_name="/measure")
               for lam in (0.0, 1.0)]
    for result in results:
        assert result["not_measured"] == {}
        for name in ("note_diversity", "diversity", "quality", *NOTE_MEASURES):
            stats = result["metrics"][name]
            assert stats["num_prompts"] == 2 and stats["ci_low"] - 1e-12 <= stats["mean"] <= stats["ci_high"] + 1e-12
    assert results[0]["per_prompt"]["note_diversity"] != results[1]["per_prompt"]["note_diversity"]
    # The second prompt's set at lam = 1 (seeds 3, 4, 5), generated again: the same note-level diversity, gated.
    takes = engine.model.generate([engine.examples[1]] * 3, [3, 4, 5], 2.0, SamplingConfig())
    codes = np.stack([take.codes.numpy() for take in takes])
    music = reward_gate("data", symbolic=True).music(codes, None, takes[0].sample_rate)
    expected = group_note_diversity(codes, music)["note_diversity"]
    assert results[1]["per_prompt"]["note_diversity"][1] == pytest.approx(expected)


@pytest.mark.parametrize("override, message", [
    ({"lam": -1}, "lambda must be between 0 (quality) and 1 (diversity), got -1"),
    ({"prompts": 1}, "the number of prompts must be between 2 and 4, got 1"),
    ({"variations": 9}, "the number of variations must be between 2 and 8, got 9"),
    ({"duration": "long"}, "duration must be a number, got 'long'"),
    ({"seed": 10**12}, "seed must be -1 (random) or between"),
])
@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_measure_bad_inputs_give_our_one_line_errors(served, override, message):
    _, client = served
    with pytest.raises(Exception) as error:
        client.predict(**{"lam": 0.5, "prompts": 2, "variations": 2, "duration": 0.5, **override}, api_name="/measure")
    assert message in str(error.value) and "Traceback" not in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_compare_with_base_cfg(served):
    engine, client = served
    audio, _, base_audio, summary = client.predict(prompt=PROMPT, lam=0.5, variations=2, duration=1.0, seed=3,
                                                   compare=True, api_name="/generate")
    assert len(audio) == 2 and len(base_audio) == 2
    assert summary["base"]["guidance_scale"] == engine.base.default_guidance_scale == 3.0
    assert summary["base"]["time_s"] > 0 and summary["base"]["diversity"] is not None
    base_entries = [e for e in manifest_entries(engine) if e["role"] == "base-cfg"]
    assert [e["seed"] for e in base_entries[-2:]] == [3, 4]
    assert all(e["sampling"]["guidance_scale"] == 3.0 and e["model_sha256"] == engine.base_endpoint.provenance[
        "model_sha256"] for e in base_entries)


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_shown_diversity_is_the_gated_reward(served):
    from dataclasses import replace

    from musicgen_cfg.sampler import SamplingConfig

    engine, _ = served
    takes = engine.model.generate([PROMPT] * 2, [1, 2], 0.5, SamplingConfig())
    values, missing = engine.set_measures(engine.model, takes)
    assert values["diversity"] > 0 and values["degenerate_rate"] == 0.0
    assert set(missing) == {"note_diversity"}  # real MusicGen: no symbolic codes
    silent = replace(takes[1], audio=np.zeros_like(takes[1].audio))
    values, _ = engine.set_measures(engine.model, [takes[0], silent])
    assert values == {"diversity": 0.0, "degenerate_rate": 0.5}  # a silent take adds no diversity


@pytest.mark.parametrize("override, message", [
    ({"lam": 1.5}, "lambda must be between 0 (quality) and 1 (diversity), got 1.5"),
    ({"lam": 10**400}, "lambda must be a finite number"),
    ({"variations": 0}, "the number of variations must be between 1 and 8, got 0"),
    ({"variations": 2.5}, "the number of variations must be a whole number"),
    ({"variations": "many"}, "the number of variations must be a number, got 'many'"),
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": "x" * 301}, "the prompt has 301 characters; at most 300 are allowed"),
    ({"prompt": 5}, "/generate: prompt must be a string, got int 5"),  # gr.Textbox would make these text
    ({"prompt": ["a"]}, "/generate: prompt must be a string, got list ['a']"),
    ({"prompt": {"a": 1}}, "/generate: prompt must be a string, got dict {'a': 1}"),
    ({"prompt": True}, "/generate: prompt must be a string, got bool True"),
    ({"duration": 1e6}, "duration must be between 0.5 and 30 s, got 1e+06"),
    ({"temperature": 0}, "temperature must be in (0, 2]"),
    ({"top_k": 100000}, "top-k must be between 0 (off) and 64"),
    ({"seed": -5}, "seed must be -1 (random) or between"),
])
@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_bad_inputs_give_our_one_line_errors(served, override, message):
    engine, client = served
    before = served_tensor(engine).clone()
    arguments = {"prompt": PROMPT, "lam": 0.9, "variations": 2, "duration": 1.0, **override}
    with pytest.raises(Exception) as error:
        client.predict(**arguments, api_name="/generate")
    assert message in str(error.value) and "Traceback" not in str(error.value)
    assert torch.equal(served_tensor(engine), before)  # a rejected request never moved the weights


@pytest.mark.parametrize("data", [["a calm folk song"], []])
@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_raw_rest_call_with_too_few_inputs_gets_one_line(served, data):
    import urllib.request

    engine, client = served
    url = client.src.rstrip("/")
    request = urllib.request.Request(f"{url}/gradio_api/call/generate", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(request).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}/gradio_api/call/generate/{event}").read().decode()
    payload = json.loads(stream.split("data:", 1)[1].strip().splitlines()[0])
    assert payload["error"] == (f"/generate takes 8 inputs (prompt, lam, variations, duration, seed, temperature, "
                                f"top_k, compare), got {len(data)}")


@pytest.mark.parametrize("route", ["call/nope", "run/nope", "call/generate_typo", "api/nope"])
@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_an_unknown_endpoint_is_a_404_in_one_line(served, route):
    import urllib.error
    import urllib.request

    _, client = served
    request = urllib.request.Request(f"{client.src.rstrip('/')}/gradio_api/{route}",
                                     data=json.dumps({"data": ["a calm folk song"]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 404
    name = route.split("/")[1]
    assert json.loads(error.value.read()) == {
        "error": f"no endpoint /{name}: this app serves /generate, /measure, /set_lambda, /info"}


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_top_k_zero_is_off_in_the_app_as_in_generate(served):
    engine, _ = served
    request = parse_request(engine.limits, PROMPT, 0.5, 1, 1.0, 0, 1.0, 0, False)
    assert request.top_k is None  # SamplingConfig(top_k=0) means the same (tests/test_generate_cli.py)


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_set_lambda_out_of_range(served):
    _, client = served
    with pytest.raises(Exception, match="lambda must be between 0"):
        client.predict(lam=-0.1, api_name="/set_lambda")


def test_incompatible_endpoints_fail_at_startup_in_one_line(endpoints, tmp_path):
    from app.engine import Endpoint, Engine
    from musicgen_cfg.tiny import save_tiny_musicgen

    _, quality, _ = endpoints
    wider = save_tiny_musicgen(tmp_path / "wider", hidden_size=96)
    with pytest.raises(UserError) as error:
        Engine.load(Endpoint("quality", str(quality), str(quality)), Endpoint("diversity", str(wider), str(wider)),
                    None, None, None, "cpu", tmp_path / "out", [], log=lambda message: None)
    assert str(error.value).startswith("quality and diversity models cannot be merged: ")
    assert "config.json key decoder." in str(error.value) and "\n" not in str(error.value)


def decoders_alive(lm) -> float:
    """Decoders' worth of tensors alive: distinct storages shaped like the LM's first embedding table (the tiny
    checkpoint's only [V + 1, D] tensors), over its K tables."""
    import gc

    shape = lm.stack.embed_tokens[0].weight.shape
    gc.collect()
    tensors = [t for t in gc.get_objects() if issubclass(type(t), torch.Tensor)]  # type(): no deprecated __class__
    storages = {t.untyped_storage().data_ptr() for t in tensors if t.device.type == "cpu" and t.shape == shape}
    return len(storages) / lm.num_codebooks


def test_engine_load_holds_three_decoders_at_its_peak(endpoints, tmp_path, monkeypatch):
    """The served one, theta_q (a copy of it) and theta_d (the diversity model's own LM): no fourth copy."""
    from app import engine as engine_module
    from app.engine import Endpoint, Engine
    from musicgen_cfg.model import load_model

    _, quality, diversity = endpoints
    probe = load_model(str(quality)).lm
    before = decoders_alive(probe) - 1  # what other tests' fixtures hold
    at_setup = []

    class Counted(engine_module.LiveMerge):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            at_setup.append(decoders_alive(probe) - 1 - before)  # the diversity model is still loaded here

    monkeypatch.setattr(engine_module, "LiveMerge", Counted)
    engine = Engine.load(Endpoint("quality", str(quality), str(quality)),
                         Endpoint("diversity", str(diversity), str(diversity)), None, None, None, "cpu",
                         tmp_path / "out", [], lam=0.5, log=lambda message: None)
    assert at_setup == [3]
    assert decoders_alive(probe) - 1 - before == 3 and engine.lam == 0.5


def test_demo_stands_in_base_for_missing_shipped_models(tmp_path, monkeypatch):
    from app import cli

    monkeypatch.setattr("musicgen_cfg.model.ASSETS", tmp_path / "musicgen_cfg" / "assets" / "default")
    spec, note = cli.shipped_endpoint("quality")
    assert spec == "default" and "quality" in note and "musicgen_cfg/assets/default/quality" in note
    (tmp_path / "musicgen_cfg" / "assets" / "default" / "quality").mkdir(parents=True)
    (tmp_path / "musicgen_cfg" / "assets" / "default" / "quality" / "config.json").write_text("{}")
    assert cli.shipped_endpoint("quality") == ("default-quality", None)


def test_cli_registers_app_and_demo():
    from app import cli
    from musicgen_cfg.cli import COMMANDS, parse

    assert (COMMANDS["demo"].run, COMMANDS["app"].run) == ("app.cli:run_demo", "app.cli:run_app")
    _, demo = parse(["demo", "--no-browser", "--port", "7999"])
    assert isinstance(demo, cli.DemoArgs) and demo.no_browser and demo.port == 7999 and demo.host == "127.0.0.1"
    assert not demo.share
    _, app = parse(["app", "--quality", "q", "--diversity", "d", "--share"])
    assert isinstance(app, cli.AppArgs) and app.share and app.base is None and app.host == "127.0.0.1"
    with pytest.raises(UserError, match="--quality q is not a checkpoint or training run directory"):
        cli.run_app(app)
    _, fp16_on_cpu = parse(["demo", "--no-browser", "--device", "cpu", "--dtype", "float16"])
    with pytest.raises(UserError, match="--dtype float16 needs a CUDA device"):
        cli.run_demo(fp16_on_cpu)


@pytest.mark.slow  # loads the shipped default model (MiniLM text encoder) three times
def test_demo_command_serves_the_shipped_models_or_stand_ins(monkeypatch, tmp_path):
    from musicgen_cfg.model import ASSETS

    served = {}
    monkeypatch.setattr("app.ui.launch", lambda engine, *args, **kwargs: served.setdefault("engine", engine))
    from musicgen_cfg.cli import run

    assert run(["demo", "--no-browser", "--device", "cpu", "--out", str(tmp_path)]) == 0
    engine = served["engine"]
    for role, endpoint in (("quality", engine.quality), ("diversity", engine.diversity)):
        built = (ASSETS / role / "config.json").is_file()
        assert endpoint.requested == f"default-{role}" and endpoint.spec == (f"default-{role}" if built else "default")
        assert built or any(f"shipped {role} model is not built yet" in note for note in engine.notes)
    assert engine.guidance_scale == json.loads((ASSETS / "base" / "config.json").read_text())["musicgen_cfg"]["guidance_scale"]
    request = parse_request(engine.limits, "a lively American fiddle tune", 0.5, 2, 1.0, 0, 1.0, 0, True)
    result = engine.generate(request, "session")
    assert len(result.items) == 2 and len(result.base_items) == 2
    assert all(item.image.read_bytes().startswith(b"\x89PNG") for item in result.items)
    assert len(list((tmp_path / "session-session").glob("*/manifest.jsonl"))) == 2  # merged, base + CFG


@pytest.mark.slow  # the Gradio server on tiny models (`served`)
def test_the_page_events_fill_the_rows_and_apply_lambda(served, monkeypatch):
    """The page's private events (the browser test drives them through chromium, when it is installed)."""
    from app.ui import MAX_VARIATIONS, build_app

    engine, _ = served
    monkeypatch.setattr("app.ui.MEASURE_VARIATIONS", 2)  # the page measures 4 prompts x 8 x 4 s: keep it short
    monkeypatch.setattr("app.ui.MEASURE_DURATION_S", 0.5)
    events = {f.fn.__name__: f.fn for f in build_app(engine).fns.values() if f.fn is not None}
    request = type("Request", (), {"session_hash": "page-test"})()
    updates = events["ui_generate"](PROMPT, 0.5, 2, 0.5, 3, False, 1.0, 0, False, request,
                                    progress=lambda *args, **kwargs: None)
    rows = updates[:MAX_VARIATIONS]
    assert [row.visible for row in rows] == [True, True] + [False] * (MAX_VARIATIONS - 2)
    assert "seeds 3–4" in updates[-2] and updates[-1]["seeds"] == [3, 4]
    assert "one set is a noisy sample" in updates[-2]
    table, measured = events["ui_measure"](0.5, [], progress=lambda *args, **kwargs: None)
    assert [m["lambda"] for m in measured] == [0.5] and "| 0.5 | – | " in table  # no note level: real MusicGen
    _, measured = events["ui_measure"](0.5, measured, progress=lambda *args, **kwargs: None)
    assert len(measured) == 1  # measuring a lam again replaces its row
    assert events["ui_set_lambda"](0.5).startswith("θ(λ = 0.5) applied in place")
