"""The conformance suite every registered backbone passes.

Parametrized over `BACKBONES`, so registering a backbone is enough to have it tested here, with its
default config and, where `OPTIONS` lists them, with its optional parts switched on.

Graph capture: `torch.compile(fullgraph=True, backend="aot_eager")`. Dynamo with `fullgraph=True`
raises on any graph break, and AOTAutograd traces the backward too, without needing a C++
compiler. `torch.fx.symbolic_trace` was not chosen: it cannot take the `Embedded` dataclass input
without wrappers, and compile is what users run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rankers.backbones import BACKBONES, Backbone, Embedded, InputSpec, build_backbone
from tests.rankers._inputs import embedded

# Optional parts of each backbone, switched on together in a second variant.
OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"batch_norm": True, "dropout": 0.1},
    "autoint": {"layer_norm": True, "scale": True, "dropout": 0.1, "residual": False},
    "autoint_plus": {"layer_norm": True, "dropout": 0.1, "dnn_units": (16, 8), "dnn_batch_norm": True},
    "finalmlp": {
        "fs1_context": ("I1", "C2"),
        "fs2_context": ("C4",),
        "mlp1_batch_norm": True,
        "mlp1_dropout": 0.1,
        "mlp2_units": (32,),
        "mlp2_batch_norm": True,
        "num_heads": 4,
    },
    "din": {
        "dnn_activation": "dice",
        "dnn_batch_norm": True,
        "dnn_dropout": 0.1,
        "attention_softmax": True,
        "attention_dropout": 0.1,
        "sequences": ("hist_C2",),
    },
    "dien": {
        "gru_type": "AGRU",
        "attention_softmax": False,
        "dnn_batch_norm": True,
        "sequences": ("hist_C2",),
    },
}
VARIANTS = [(name, "default") for name in BACKBONES] + [
    (name, "options") for name in BACKBONES if name in OPTIONS
]
# Behaviour sequences of C2 and C3 (attended by DIN/DIEN, ignored by the others) and one without a
# target field (sum-pooled by DIN/DIEN).
SEQUENCES = (("hist_C2", "C2", 5), ("hist_C3", "C3", 5), ("hist_tag", "", 4))
SPEC = InputSpec(
    dense_names=("I1", "I2", "I3"),
    field_names=tuple(f"C{i}" for i in range(1, 6)),
    embedding_dim=8,
    sequences=SEQUENCES,
)
NO_DENSE = InputSpec(dense_names=(), field_names=SPEC.field_names, embedding_dim=8, sequences=SEQUENCES)


# Backbones whose outputs are fixed, with the labels they need (ESMM: click and conversion in,
# ctr, cvr and ctcvr out).
FIXED_TASKS = {"esmm": ("ctr", "cvr")}


def build(name: str, variant: str, tasks: tuple[str, ...] = ("ctr",), spec: InputSpec = SPEC) -> Backbone:
    cls = BACKBONES[name]
    tasks = FIXED_TASKS.get(name, tasks)
    config = cls.config_class(**(OPTIONS[name] if variant == "options" else {}))
    return build_backbone(name, spec, config, tasks)


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
@pytest.mark.parametrize("tasks", [("ctr",), ("ctr", "cvr")])
@pytest.mark.parametrize("batch", [1, 7])
def test_finite_logits_of_shape_b_per_task(
    name: str, variant: str, tasks: tuple[str, ...], batch: int
) -> None:
    torch.manual_seed(0)
    model = build(name, variant, tasks).eval()
    out = model(embedded(SPEC, batch))
    assert set(out.logits) == set(model.tasks) and set(FIXED_TASKS.get(name, tasks)) <= set(model.tasks)
    for logit in out.logits.values():
        assert logit.shape == (batch,) and torch.isfinite(logit).all()
    if batch > 1:  # batch norm needs two rows to train
        model.train()
        assert all(torch.isfinite(v).all() for v in model(embedded(SPEC, batch)).logits.values())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_works_without_dense_features(name: str) -> None:
    torch.manual_seed(0)
    out = build(name, "default", spec=NO_DENSE).eval()(embedded(NO_DENSE, 3))
    assert out.logits["ctr"].shape == (3,)


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_gradient_reaches_every_parameter(name: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build(name, variant, ("ctr", "cvr")).train()
    x = embedded(SPEC, 16)
    x.fields.requires_grad_(True)
    attended = {"din", "dien"}  # the others ignore sequences
    for seq in x.sequences.values():
        seq.values.requires_grad_(True)
    out = model(x)
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1)).float()
    loss = sum(F.binary_cross_entropy_with_logits(v, y) for v in out.logits.values())
    (loss + (0 if out.aux_loss is None else out.aux_loss)).backward()  # type: ignore[union-attr]
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    assert x.fields.grad is not None and x.fields.grad.abs().sum() > 0
    if name in attended:
        for seq_name, seq in x.sequences.items():
            assert seq.values.grad is not None and seq.values.grad.abs().sum() > 0, seq_name


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_deterministic_in_eval_mode(name: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build(name, variant).eval()
    x = embedded(SPEC, 7)
    torch.testing.assert_close(model(x).logits["ctr"], model(x).logits["ctr"], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_loss_halves_within_50_steps_on_one_batch(name: str, variant: str) -> None:
    """The model with trainable field vectors (as the tables are) fits one batch of random labels."""
    torch.manual_seed(0)
    model = build(name, variant).train()
    x = embedded(SPEC, 64)
    fields = nn.Parameter(x.fields.clone())
    y = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(2)).float()
    optimizer = torch.optim.Adam([*model.parameters(), fields], lr=1e-2)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        out = model(Embedded(x.dense, fields, x.field_names, x.sequences))
        loss = F.binary_cross_entropy_with_logits(out.logits["ctr"], y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) <= 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_compiles_forward_and_backward_without_graph_breaks(name: str) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(name, "options" if name in OPTIONS else "default", ("ctr", "cvr")).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = embedded(SPEC, 8)
    torch.manual_seed(1)
    out = compiled(x)
    loss = sum(v.sum() for v in out.logits.values())
    (loss + (0 if out.aux_loss is None else out.aux_loss)).backward()  # type: ignore[union-attr]
    model.eval()
    torch.testing.assert_close(compiled(x).logits["ctr"], model(x).logits["ctr"])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_rejects_a_config_of_another_backbone(name: str) -> None:
    other = next(cls for n, cls in BACKBONES.items() if cls.config_class is not BACKBONES[name].config_class)
    with pytest.raises(TypeError, match=BACKBONES[name].config_class.__name__):
        BACKBONES[name](SPEC, other.config_class(), ("ctr",))


def test_no_backbone_imports_the_registry_or_another_model() -> None:
    """Imports point one way: models -> layers -> base, and to configs (the torch-free config
    dataclasses) and shapes (the static-shape switch), which import nothing of ours; only the
    registry (and the package that re-exports it) imports the models."""
    import ast
    from pathlib import Path

    import rankers.backbones

    root = Path(rankers.backbones.__file__).parent
    shared = {
        "rankers.backbones.base",
        "rankers.backbones.layers",
        "rankers.backbones.configs",
        "rankers.backbones.shapes",
    }
    for path in root.glob("*.py"):
        if path.stem in ("__init__", "registry"):
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        ours = {m for m in imported if m.startswith("rankers.backbones")}
        assert ours <= shared, f"{path.name} imports {sorted(ours - shared)}"


def test_the_registry_the_configs_and_the_package_names_agree() -> None:
    import rankers.backbones as package
    from rankers.backbones.configs import BACKBONE_CONFIGS

    assert set(BACKBONES) == set(BACKBONE_CONFIGS)
    for name, cls in BACKBONES.items():
        assert cls.config_class is BACKBONE_CONFIGS[name], name
    assert sorted(package.__all__) == sorted(package._MODULE)  # the lazy names: listed once each
    for name in package.__all__:
        assert getattr(package, name) is not None, name
