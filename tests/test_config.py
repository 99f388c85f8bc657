"""The shipped experiment configs and the config schema's one-line errors."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from harness.config import ConfigError, load_experiment, parse_variant

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate() -> None:
    fd = load_experiment(ROOT / "experiments" / "fashion-default.toml")
    assert fd.data.dataset == "fashion-mnist" and fd.model.arch == "cnn-small"
    assert set(fd.export.frameworks) == {"tf", "torch"}
    assert set(fd.compress.tf) >= {"prune-0.6", "prune-0.7", "prune-0.8", "prune-0.9", "cluster-4", "cluster-8",
                                   "cluster-16", "int8", "dynamic-int8", "fp16"}  # fmt: skip
    paper = load_experiment(ROOT / "experiments" / "paper-cifar10.toml")
    s = paper.splits
    assert paper.data.dataset == "cifar10" and paper.model.arch == "resnet18"
    assert (s.target_in, s.target_out, s.shadow_in, s.shadow_out) == (20000, 10000, 20000, 10000)
    assert set(paper.compress.tf) == set(fd.compress.tf) and set(paper.compress.torch) == set(fd.compress.torch)
    tiny = load_experiment(ROOT / "tests" / "data" / "tiny.toml")
    assert tiny.data.dataset == "digits" and tiny.train.epochs <= 5


def test_leaky_default_and_generalising_example() -> None:
    """The demo overfits on purpose (issue 12); the former, well-generalising default stays as an example."""
    fd = load_experiment(ROOT / "experiments" / "fashion-default.toml")
    gen = load_experiment(ROOT / "experiments" / "fashion-generalising.toml")
    assert fd.train.early_stopping_patience == 0 and fd.train.weight_decay == 0.0
    assert fd.splits.target_in < gen.splits.target_in and fd.train.epochs > gen.train.epochs
    assert fd.splits.target_out * 0.001 >= 1  # TPR at 0.1% FPR is resolvable
    assert fd.attack.samia_perturbations > 0 and gen.attack.samia_perturbations == 0
    assert set(gen.compress.tf) == set(fd.compress.tf) and set(gen.compress.torch) == set(fd.compress.torch)
    assert gen.experiment.name == "fashion-generalising" and fd.experiment.name == "fashion-default"


def test_default_config_has_one_source_shipped_in_the_package() -> None:
    packaged = resources.files("harness") / "experiments" / "fashion-default.toml"
    repo = ROOT / "experiments" / "fashion-default.toml"
    assert packaged.is_file()
    assert repo.resolve() == Path(str(packaged)).resolve()  # a link, not a second copy that could drift


@pytest.mark.parametrize(
    "text, needles",
    [
        ("[splits]\ntarget_inn = 3\n", ["[splits.target_inn]", "unknown key", "target_in"]),
        ("[nope]\nx = 1\n", ["[nope]", "unknown key", "experiment, data"]),
        ('[compress]\ntf = ["cluster-1"]\n', ["compress.tf", "cluster count", ">= 2"]),
        ('[compress]\ntf = ["int8+prune-0.5"]\n', ["compress.tf", "must come last"]),
        ('[compress]\ntf = ["int8", "int8"]\n', ["unique"]),
        ('[export]\nframeworks = ["jax"]\n', ["export.frameworks", "'tf' or 'torch'"]),
        ('[data]\ndataset = "svhn"\n', ["data.dataset", "npz:PATH"]),
        ("[splits]\ntarget_in = 0\n", ["splits.target_in", "greater than 0"]),
        ('[train]\noptimizer = "rmsprop"\n', ["train.optimizer", "'adam' or 'sgd'"]),
    ],
)
def test_bad_configs_are_one_line(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p))
    for n in needles:
        assert n in msg, (n, msg)


def test_variant_labels() -> None:
    assert parse_variant("prune-0.8+int8") == ["prune-0.8", "int8"]
    assert parse_variant("prune-0.5+cluster-8+dynamic-int8") == ["prune-0.5", "cluster-8", "dynamic-int8"]
    for bad in ("prune-0", "prune-1.0", "cluster-1", "int4", "original+int8", "fp16+int8"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_build_keys_follow_the_relevant_sections() -> None:
    from harness.build.stage import PlannedArtifact, build_key

    exp = load_experiment(ROOT / "tests" / "data" / "tiny.toml")
    item = PlannedArtifact("tf", "target", None, "prune-0.8", "tflite")
    k = build_key(exp, item, "d", "s")
    assert k == build_key(exp, item, "d", "s")
    # the variant list, attack and audit sections do not change an artifact
    same = exp.model_copy(update={"compress": exp.compress.model_copy(update={"tf": ["prune-0.8"]}),
                                  "attack": exp.attack.model_copy(update={"bootstrap": 7})})  # fmt: skip
    assert build_key(same, item, "d", "s") == k
    # training, fine-tuning, data and splits do
    for changed in (
        exp.model_copy(update={"train": exp.train.model_copy(update={"epochs": 9})}),
        exp.model_copy(update={"compress": exp.compress.model_copy(update={"finetune_lr": 0.1})}),
    ):
        assert build_key(changed, item, "d", "s") != k
    assert build_key(exp, item, "d2", "s") != k and build_key(exp, item, "d", "s2") != k
    assert build_key(exp, PlannedArtifact("tf", "shadow", 0, "prune-0.8", "tflite"), "d", "s") != k
    # fine-tuning settings do not touch variants without fine-tuning; calibration size only static int8
    plain = PlannedArtifact("tf", "target", None, "dynamic-int8", "tflite")
    static = PlannedArtifact("tf", "target", None, "int8", "tflite")
    lr = exp.model_copy(update={"compress": exp.compress.model_copy(update={"finetune_lr": 0.1})})
    rep = exp.model_copy(update={"compress": exp.compress.model_copy(update={"representative_samples": 7})})
    assert build_key(lr, plain, "d", "s") == build_key(exp, plain, "d", "s")
    assert build_key(rep, plain, "d", "s") == build_key(exp, plain, "d", "s")
    assert build_key(rep, static, "d", "s") != build_key(exp, static, "d", "s")
    assert build_key(rep, item, "d", "s") == k


@pytest.mark.parametrize(
    "text, k",
    [
        ("", 1),
        ("[splits]\nn_shadows = 3\n", 3),  # the old key still works
        ("[attack]\nreference_models = 16\n", 16),
        ("[splits]\nn_shadows = 3\n[attack]\nreference_models = 5\n", 5),  # attack.reference_models wins
    ],
)
def test_reference_models_resolve_from_either_key(tmp_path: Path, text: str, k: int) -> None:
    p = tmp_path / "e.toml"
    p.write_text(text)
    exp = load_experiment(p)
    assert exp.reference_models == exp.attack.reference_models == exp.splits.n_shadows == k
    assert exp.attack.threat_model == "offline"
    from harness.config import Experiment

    assert Experiment.model_validate(exp.model_dump(mode="json")) == exp  # written back (import) reads the same


@pytest.mark.parametrize(
    "text, needles",
    [
        ('[attack]\nthreat_model = "online"\n', ["'online' needs attack.reference_models >= 2", "got 1"]),
        ('[attack]\nthreat_model = "both"\n', ["attack.threat_model", "'online' or 'offline'"]),
        ("[splits]\npool = 5000\n", ["splits.pool is the online attacker's pool", "threat_model = 'online'"]),
        ('[splits]\npool = 100\n[attack]\nthreat_model = "online"\nreference_models = 4\n',
         ["splits.pool = 100 is smaller than the target candidates", "4000"]),
        ("[splits]\npopulation = -1\n", ["splits.population", "greater than or equal to 0"]),
        ("[attack]\nreference_models = 0\n", ["attack.reference_models", "greater than or equal to 1"]),
    ],
)
def test_bad_owner_configs_are_one_line(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p))
    for n in needles:
        assert n in msg, (n, msg)
