"""DIN: attention of the candidate over the user's behaviours, pooled into an MLP.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. The local
activation unit scores each behaviour k against the query q (the candidate's target fields) with an
MLP over [q, k, q - k, q * k]; the behaviours are summed weighted by their scores (no softmax by
default, as in the paper, so the pooled vector keeps the strength of the interest), and the result
joins the other fields' embeddings in the MLP.

Sequences and targets: the attended sequences (`sequences`, by default every sequence whose table a
categorical field shares) are concatenated per position into one behaviour vector, and their target
fields into the query; sequences not attended to are sum-pooled (`layers.InterestMLP`). The unit
runs on the real positions only in eager mode, on every position under static shapes
(`layers.ActivationUnit`; `shapes.fixed_shapes` for GPUs).

Notation: B batch, F categorical fields, D embedding dim, L padded length (the longest sequence in
the batch; the max_len under static shapes), W = G*D the behaviour vector of G attended sequences,
K tasks.
"""

from __future__ import annotations

from rankers.backbones.base import Backbone, BackboneOutput, Embedded, InputSpec
from rankers.backbones.configs import DINConfig
from rankers.backbones.layers import ActivationUnit, InterestMLP


class DIN(Backbone):
    """Deep Interest Network: target attention over the behaviour sequence, then an MLP.

    Example:
        >>> spec = InputSpec((), ("user", "item", "cate"), 16, (("hist_item", "item", 50),
        ...                                                      ("hist_cate", "cate", 50)))
        >>> model = DIN(spec, DINConfig())   # attends over [hist_item, hist_cate] from [item, cate]
    """

    config_class = DINConfig

    def __init__(
        self, spec: InputSpec, config: DINConfig = DINConfig(), tasks: tuple[str, ...] = ("ctr",)
    ) -> None:
        super().__init__(spec, config, tasks)
        self.softmax = config.attention_softmax
        self.interest_mlp = InterestMLP(spec, config, len(self.tasks))
        self.attention = ActivationUnit(
            self.interest_mlp.width,
            config.attention_units,
            config.attention_activation,
            config.attention_dropout,
        )

    def forward(self, x: Embedded) -> BackboneOutput:
        """(B, n_dense), (B, F, D) and sequences (B, L, D) -> logits (B,) per task."""
        query, keys, mask = self.interest_mlp.inputs(x)  # (B, W), (B, L, W), (B, L)
        interest = self.attention.pool(query, keys, mask, self.softmax)  # (B, W)
        out = self.interest_mlp(x, interest)  # (B, K)
        return BackboneOutput({t: out[:, i] for i, t in enumerate(self.tasks)})
