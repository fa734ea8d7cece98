"""RER parts of the item encoder: shapes and padding, the gated ID/knowledge fusion, cold items, switches, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reaseq.config import ModelConfig, RunConfig
from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import build_ctr_samples
from reaseq.errors import ConfigError
from reaseq.rank.ctr import run_ctr
from reaseq.rank.models.din import build_din
from reaseq.rank.models.item_encoder import (
    ItemEncoder,
    build_item_encoder,
    id_regression_loss,
)
from reaseq.rank.models.knowledge_parts import (
    KNOWLEDGE_PART,
    SEMANTIC_ID_PART,
    AlignedKnowledgePart,
    KARPart,
    SemanticIdPart,
    TextPart,
    build_knowledge_parts,
)
from reaseq.represent.align import Projection, popularity_gate
from reaseq.represent.tables import NO_CODE, KnowledgeTables, save_tables
from tests.rank.test_models import din_batch
from tests.represent.helpers import sequence_data

N_ITEMS, DIM, TEXT_DIM, ALIGNED_DIM, LEVELS, CODES = 12, 8, 16, 6, 2, 3
NO_KNOWLEDGE = [4, 9]
COLD = [5, 11]  # knowledge, no training interaction: gate 0


def make_tables(aligned_dim: int = ALIGNED_DIM, seed: int = 0, n_items: int = N_ITEMS) -> KnowledgeTables:
    """Hand-made tables in the embed step's conventions (row 0 = padding, -1 = no semantic ID)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    rows = n_items + 1
    has = np.ones(rows, bool)
    has[[0, *NO_KNOWLEDGE]] = False
    text = rng.normal(size=(rows, TEXT_DIM)).astype(np.float32) * has[:, None]
    projection = Projection(TEXT_DIM, aligned_dim, hidden=8).eval()
    with torch.no_grad():
        aligned = projection(torch.from_numpy(text)).numpy() * has[:, None]
    counts = rng.integers(1, 50, size=rows)
    counts[COLD] = 0
    codes = rng.integers(0, CODES, size=(rows, LEVELS + 1))  # + the dedup level
    codes[~has] = NO_CODE
    meta = {"config": {"semantic_ids": {"dedup": True}}}
    return KnowledgeTables(text, aligned.astype(np.float32), popularity_gate(counts, 10.0), codes.astype(np.int64), has, meta, projection)


def tiny_data() -> SequenceData:
    return sequence_data([[1, 2, 3, 4], [6, 7, 8, 9, 10], [2, 12, 1]], N_ITEMS)


def cfg(**fields: object) -> ModelConfig:
    return ModelConfig(embedding_dim=DIM, attention_hidden=[8], mlp_hidden=[8], dropout=0.0, use_user_features=False, **fields)


ITEMS = torch.tensor([[0, 1, 4, 5], [0, 0, 11, 12]])


@pytest.mark.parametrize("knowledge", ["aligned", "text", "kar"])
def test_knowledge_parts_shapes_and_zeros_for_padding_and_missing_knowledge(knowledge: str) -> None:
    part = build_knowledge_parts(cfg(knowledge=knowledge), make_tables(), N_ITEMS, DIM)[KNOWLEDGE_PART]
    out = part(ITEMS)
    assert out.shape == (2, 4, DIM) and part.out_dim == DIM
    assert torch.all(out[0, 0] == 0) and torch.all(out[1, :2] == 0)  # padding
    assert torch.all(out[0, 2] == 0)  # item 4 has no knowledge text
    assert out[0, 1].abs().sum() > 0 and out[1, 3].abs().sum() > 0
    # Looking items up one by one gives the same vectors (the per-unique shortcut is exact).
    torch.testing.assert_close(out[1, 3], part(torch.tensor([12]))[0])


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_semantic_id_part_pools_level_embeddings(pooling: str) -> None:
    tables = make_tables()
    part = build_knowledge_parts(cfg(semantic_ids=True, semantic_id_pooling=pooling), tables, N_ITEMS, DIM)[SEMANTIC_ID_PART]
    assert isinstance(part, SemanticIdPart) and len(part.embeddings) == LEVELS  # the dedup level is left out by default
    out = part(ITEMS)
    assert out.shape == (2, 4, DIM)
    assert torch.all(out[0, 0] == 0) and torch.all(out[0, 2] == 0)  # padding and no semantic ID
    codes = tables.semantic_ids[1, :LEVELS] + 1
    expected = sum(part.embeddings[level].weight[codes[level]] for level in range(LEVELS))
    torch.testing.assert_close(out[0, 1], expected / (LEVELS if pooling == "mean" else 1))
    with_dedup = build_knowledge_parts(cfg(semantic_ids=True, semantic_id_dedup_level=True), tables, N_ITEMS, DIM)[SEMANTIC_ID_PART]
    assert len(with_dedup.embeddings) == LEVELS + 1


def test_gated_fusion_is_gate_times_id_plus_one_minus_gate_times_knowledge() -> None:
    data, tables = tiny_data(), make_tables()
    model = build_din(data, cfg(knowledge="aligned", semantic_ids=True, use_item_features=False), tables).eval()
    encoder = model.item_encoder
    assert encoder.gated == KNOWLEDGE_PART
    parts = encoder.parts
    with torch.no_grad():
        out = encoder(ITEMS)
        gate = torch.from_numpy(tables.gate)[ITEMS].unsqueeze(-1)
        gate = torch.where(torch.from_numpy(tables.has_knowledge)[ITEMS].unsqueeze(-1), gate, torch.ones_like(gate))
        expected = gate * parts["id"](ITEMS) + (1 - gate) * parts[KNOWLEDGE_PART](ITEMS) + parts[SEMANTIC_ID_PART](ITEMS)
    torch.testing.assert_close(out, expected * (ITEMS > 0).unsqueeze(-1))
    assert 0 < gate[0, 1].item() < 1  # the check mixes both parts for a warm item
    # An item without knowledge keeps its whole ID embedding (gate 1), not a shrunk one.
    torch.testing.assert_close(out[0, 2], (parts["id"](ITEMS) + parts[SEMANTIC_ID_PART](ITEMS))[0, 2].detach())


def test_cold_item_is_knowledge_only_and_its_id_embedding_gets_no_gradient() -> None:
    data, tables = tiny_data(), make_tables()
    encoder = build_din(data, cfg(knowledge="aligned", use_item_features=False), tables).item_encoder
    cold = torch.tensor(COLD)
    ids = encoder.parts["id"].embedding.weight
    with torch.no_grad():
        before = encoder(cold)
        torch.testing.assert_close(before, encoder.parts[KNOWLEDGE_PART](cold))
        ids[COLD] += 100.0  # noise in the untrained ID rows must not leak into the representation
        torch.testing.assert_close(encoder(cold), before)
    encoder(torch.tensor([[5, 1, 11]])).sum().backward()
    assert torch.all(ids.grad[COLD] == 0) and ids.grad[1].abs().sum() > 0


@pytest.mark.parametrize("knowledge", ["aligned", "kar"])
def test_lookup_encodes_distinct_ids_once_and_matches_slot_by_slot_encoding(knowledge: str) -> None:
    encoder = build_din(tiny_data(), cfg(knowledge=knowledge, semantic_ids=True), make_tables()).item_encoder.eval()
    targets, history = torch.tensor([3, 5, 3, 0]), torch.tensor([[0, 1, 3, 3], [12, 12, 5, 4]])
    calls: list[int] = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].numel()))
    with torch.no_grad():
        got = encoder.lookup(targets, history)
    assert calls == [6]  # one call over the distinct ids 0, 1, 3, 4, 5 and 12
    with torch.no_grad():
        torch.testing.assert_close(got[0], encoder(targets))
        torch.testing.assert_close(got[1], encoder(history))


def test_text_residual_adds_the_raw_text_part_outside_the_gate() -> None:
    data, tables = tiny_data(), make_tables()
    encoder = build_din(data, cfg(knowledge="aligned", use_item_features=False, text_residual=True), tables).item_encoder.eval()
    assert set(encoder.parts) == {"id", KNOWLEDGE_PART, "text_residual"}
    cold = torch.tensor(COLD)
    with torch.no_grad():
        expected = encoder.parts[KNOWLEDGE_PART](cold) + encoder.parts["text_residual"](cold)  # gate 0: knowledge + text
        torch.testing.assert_close(encoder(cold), expected)
    assert set(build_din(data, cfg(knowledge="aligned", use_item_features=False), tables).item_encoder.parts) == {"id", KNOWLEDGE_PART}


def test_id_dropout_makes_items_with_knowledge_knowledge_only_in_training_only() -> None:
    data, tables = tiny_data(), make_tables()
    encoder = build_din(data, cfg(knowledge="aligned", use_item_features=False, id_dropout=0.99), tables).item_encoder
    warm_known, no_knowledge = torch.tensor([1, 2, 3]), torch.tensor(NO_KNOWLEDGE)
    torch.manual_seed(0)
    with torch.no_grad():
        encoder.eval()
        mixed = encoder(warm_known)
        encoder.train()
        dropped = encoder(warm_known)
        kept = encoder(no_knowledge)
    torch.testing.assert_close(dropped, encoder.parts[KNOWLEDGE_PART](warm_known).detach())  # gate 0: knowledge alone
    assert not torch.allclose(mixed, dropped)  # in eval the popularity gate mixes the ID part back in
    torch.testing.assert_close(kept, encoder.parts["id"](no_knowledge).detach())  # nothing to fall back on: never dropped
    assert build_din(data, cfg(knowledge="text", id_dropout=0.5), tables).item_encoder.id_dropout == 0.0  # only the gated part


def test_id_regression_pulls_trained_items_knowledge_vectors_towards_their_fixed_id_embeddings() -> None:
    data, tables = tiny_data(), make_tables()
    encoder = build_din(data, cfg(knowledge="aligned", use_item_features=False, id_regression=2.0), tables).item_encoder
    items = torch.arange(1, N_ITEMS + 1)
    encoder.eval()
    encoder(items)
    assert encoder.take_auxiliary_loss() is None  # evaluation leaves no loss behind
    encoder.train()
    encoder(items)
    # Weighted by the gate: cold items' ID embeddings are untrained (gate 0); items without knowledge have no vector.
    weight = torch.from_numpy(tables.gate[1:]).float() * torch.tensor([i not in NO_KNOWLEDGE for i in range(1, N_ITEMS + 1)])
    assert (weight[[c - 1 for c in COLD]] == 0).all()
    ids, vectors = encoder.parts["id"](items).detach(), encoder.parts[KNOWLEDGE_PART](items)
    expected = (weight[:, None] * (vectors - ids).pow(2)).sum() / (weight[:, None] * ids.pow(2)).sum()
    torch.testing.assert_close(encoder.take_auxiliary_loss(), 2.0 * expected)
    assert encoder.take_auxiliary_loss() is None  # taken once
    ids_before = encoder.parts["id"].embedding.weight.detach().clone()
    optimiser = torch.optim.Adam(encoder.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        encoder(items)
        loss = encoder.take_auxiliary_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    torch.testing.assert_close(encoder.parts["id"].embedding.weight, ids_before)  # the ID side is a target, never moved by it
    assert build_din(data, cfg(knowledge="text", id_regression=1.0), tables).item_encoder.id_regression == 0.0  # only the gated part


def test_id_regression_loss_is_zero_without_weight_and_keeps_the_graph() -> None:
    knowledge = torch.randn(3, DIM, requires_grad=True)
    loss = id_regression_loss(torch.randn(3, DIM), knowledge, torch.zeros(3))
    assert loss.item() == 0.0 and loss.requires_grad


def test_run_ctr_adds_the_id_regression_loss_to_training(prepared, run_config: RunConfig) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    runs = {}
    for weight in (0.0, 5.0):
        model_cfg = run_config.model.model_copy(update={"knowledge": "aligned", "id_regression": weight})
        runs[weight] = run_ctr(data, samples, run_config.model_copy(update={"model": model_cfg}), seed=0, tables=make_tables(n_items=data.n_items))
    # The reported training loss includes the extra term, so it is larger with it on the same samples and seed.
    assert runs[5.0]["curves"]["train_loss"][0] > runs[0.0]["curves"]["train_loss"][0]


def test_fine_tuned_projection_starts_at_the_aligned_vectors_and_trains_a_copy() -> None:
    tables = make_tables()
    frozen = build_knowledge_parts(cfg(knowledge="aligned"), tables, N_ITEMS, DIM)[KNOWLEDGE_PART]
    tuned = build_knowledge_parts(cfg(knowledge="aligned", fine_tune_projection=True), tables, N_ITEMS, DIM)[KNOWLEDGE_PART]
    assert isinstance(tuned, AlignedKnowledgePart) and tuned.projection is not None and frozen.projection is None
    tuned.adapter.load_state_dict(frozen.adapter.state_dict())
    tuned.eval()
    torch.testing.assert_close(tuned(ITEMS), frozen(ITEMS), atol=1e-5, rtol=1e-5)
    original = {k: v.clone() for k, v in tables.projection.state_dict().items()}
    optimiser = torch.optim.SGD(tuned.parameters(), lr=1.0)
    tuned.train()
    tuned(ITEMS).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned.projection.parameters())
    optimiser.step()
    for key, value in tables.projection.state_dict().items():  # RER's own projection stays as it was
        torch.testing.assert_close(value, original[key])


def test_kar_adaptor_output_shape_and_gates_sum_to_one() -> None:
    tables = make_tables()
    part = build_knowledge_parts(cfg(knowledge="kar", kar_experts=3, kar_hidden=5), tables, N_ITEMS, DIM)[KNOWLEDGE_PART]
    assert isinstance(part, KARPart) and len(part.experts) == 3
    x = torch.from_numpy(tables.text_vectors[1:])
    gates = part.gates(x)
    assert gates.shape == (N_ITEMS, 3) and torch.all(gates >= 0)
    torch.testing.assert_close(gates.sum(-1), torch.ones(N_ITEMS))
    assert part.adapt(x).shape == (N_ITEMS, DIM)
    # The output is the gate-weighted sum of the experts.
    expected = sum(gates[:, e : e + 1] * part.experts[e](x) for e in range(3))
    torch.testing.assert_close(part.adapt(x), expected)


@pytest.mark.parametrize(
    ("knowledge", "semantic_ids", "part_type", "gated"),
    [("none", False, None, None), ("none", True, None, None), ("text", False, TextPart, None), ("kar", True, KARPart, None), ("aligned", True, AlignedKnowledgePart, KNOWLEDGE_PART)],
)
def test_switches_build_the_right_parts(knowledge: str, semantic_ids: bool, part_type: type | None, gated: str | None) -> None:
    model = build_din(tiny_data(), cfg(knowledge=knowledge, semantic_ids=semantic_ids), make_tables())
    parts = model.item_encoder.parts
    assert (KNOWLEDGE_PART in parts) == (part_type is not None) and (SEMANTIC_ID_PART in parts) == semantic_ids
    if part_type is not None:
        assert type(parts[KNOWLEDGE_PART]) is part_type
    assert model.item_encoder.gated == gated
    with torch.no_grad():
        scores = model.eval()(din_batch([[1, 2], [], [5, 11, 3]], 6, [3, 5, 12], [0, 1, 2]))
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_concat_fusion_counts_the_gated_pair_once() -> None:
    model = build_din(tiny_data(), cfg(knowledge="aligned", semantic_ids=True, item_fusion="concat", use_item_features=False), make_tables())
    assert model.item_encoder.out_dim == 2 * DIM  # (gated id + knowledge) and semantic ids
    assert model.item_encoder(ITEMS).shape == (2, 4, 2 * DIM)


def test_enabled_part_without_tables_is_a_config_error_with_the_fix(tmp_path: Path) -> None:
    for fields in ({"knowledge": "aligned"}, {"semantic_ids": True}):
        with pytest.raises(ConfigError, match="embed step"):
            build_din(tiny_data(), cfg(**fields))
    assert KNOWLEDGE_PART not in build_din(tiny_data(), cfg()).item_encoder.parts  # the plain DIN needs none
    # ...and the path in the config is read when no tables are passed.
    path = save_tables(make_tables(), tmp_path / "embed" / "knowledge.npz")
    model = build_din(tiny_data(), cfg(knowledge="aligned", knowledge_tables=path))
    assert isinstance(model.item_encoder.parts[KNOWLEDGE_PART], AlignedKnowledgePart)


def test_tables_of_another_catalogue_or_without_projection_are_config_errors() -> None:
    other = sequence_data([[1, 2]], N_ITEMS + 3)
    with pytest.raises(ConfigError, match="cover 12 items"):
        build_din(other, cfg(knowledge="text"), make_tables())
    tables = make_tables()
    tables.projection = None
    with pytest.raises(ConfigError, match="projection"):
        build_din(tiny_data(), cfg(knowledge="aligned", fine_tune_projection=True), tables)


def test_item_encoder_rejects_a_gate_without_id_or_gate_method() -> None:
    tables = make_tables()
    text = TextPart(torch.from_numpy(tables.text_vectors), DIM)
    with pytest.raises(ValueError, match="gate_of"):
        ItemEncoder({"id": build_item_encoder(tiny_data(), DIM, False).parts["id"], KNOWLEDGE_PART: text}, gated=KNOWLEDGE_PART)


def test_run_ctr_trains_din_with_rer_parts(prepared, run_config: RunConfig) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    cfg = run_config.model_copy(update={"model": run_config.model.model_copy(update={"knowledge": "aligned", "semantic_ids": True})})
    result = run_ctr(data, samples, cfg, seed=0, tables=make_tables(n_items=data.n_items))
    assert result["epochs_run"] >= 1 and 0.0 <= result["test"]["metrics"]["auc"] <= 1.0
    assert np.isfinite(result["curves"]["train_loss"]).all()


@pytest.mark.parametrize("knowledge", ["aligned", "text", "kar"])
def test_training_is_bitwise_reproducible_with_several_threads(knowledge: str) -> None:
    # Gathers whose backward accumulates with atomics on CPU threads (tensor[index]) made two runs of one seed
    # differ in the 4th decimal of AUC; every gather on the training path must be deterministic.
    data, tables = tiny_data(), make_tables()
    gen = torch.Generator().manual_seed(1)
    batch = {
        "user": torch.randint(0, 3, (512,), generator=gen),
        "item": torch.randint(1, N_ITEMS + 1, (512,), generator=gen),
        "label": torch.randint(0, 2, (512,), generator=gen).float(),
        "hist_items": torch.randint(0, N_ITEMS + 1, (512, 128), generator=gen),
    }
    batch["hist_actions"] = (batch["hist_items"] > 0).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for _ in range(3):
            torch.manual_seed(0)
            model = build_din(data, cfg(knowledge=knowledge, semantic_ids=True, use_item_features=False), tables)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
            for _ in range(3):
                loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(weights[0], w) for w in weights[1:])
