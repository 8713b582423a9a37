"""Classification and retrieval metrics against independent NumPy computations."""
import numpy as np
import pytest

from slim.tasks.cls.metrics import classification_metrics, gallery_mask, recall_at_1, topk_accuracy


def reference_topk(logits, labels, k):
    """A sample is right when fewer than k classes score strictly higher than its label (no ties here)."""
    hits = 0
    for row, label in zip(logits, labels):
        higher = sum(1 for c in range(len(row)) if row[c] > row[label])
        hits += higher < k
    return hits / len(labels)


def reference_recall(emb, labels, gallery, gallery_emb=None):
    """Brute-force cosine nearest neighbour, one pair at a time."""
    g_emb = emb if gallery_emb is None else gallery_emb
    g_idx = [i for i in range(len(labels)) if gallery[i]]
    q_idx = [i for i in range(len(labels)) if not gallery[i]]
    hits = 0
    for q in q_idx:
        best, best_sim = None, -np.inf
        for g in g_idx:
            sim = float(np.dot(emb[q], g_emb[g]) / (np.sqrt(np.dot(emb[q], emb[q])) * np.sqrt(np.dot(g_emb[g], g_emb[g]))))
            if sim > best_sim:
                best, best_sim = g, sim
        hits += labels[best] == labels[q]
    return hits / len(q_idx)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_topk_matches_a_rank_count(num_classes):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, num_classes))
    labels = rng.integers(0, num_classes, 200)
    for k in (1, 2, 5):
        assert topk_accuracy(logits, labels, k) == pytest.approx(reference_topk(logits, labels, min(k, num_classes)))
    assert topk_accuracy(logits, labels, 5 if num_classes == 3 else 10) == 1.0


def test_topk_on_a_hand_made_case():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.4, 0.6]])
    labels = np.array([1, 2, 2, 1])
    assert topk_accuracy(logits, labels, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(logits, labels, 2) == 0.75  # row 1: label 2 ties with class 1, the lower index wins
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_gallery_is_the_first_half_of_each_class_in_dataset_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 2, 1, 0, 0])
    mask = gallery_mask(labels)
    expected = np.zeros(len(labels), dtype=bool)
    for c in set(labels.tolist()):
        positions = [i for i, v in enumerate(labels) if v == c]
        for i in positions[:int(np.ceil(len(positions) / 2))]:
            expected[i] = True
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 2 + 1 + 3  # class 2: 4 -> 2, class 1: 2 -> 1, class 0: 5 -> 3


def test_recall_at_1_matches_brute_force_cosine():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 120)
    centers = rng.normal(size=(5, 16))
    emb = centers[labels] * rng.uniform(0.5, 3, size=(120, 1)) + rng.normal(scale=1.2, size=(120, 16))
    mask = gallery_mask(labels)
    recall, queries, gallery = recall_at_1(emb, labels)
    assert (queries, gallery) == ((~mask).sum(), mask.sum())
    assert recall == pytest.approx(reference_recall(emb, labels, mask))
    assert 0.2 < recall < 1.0  # a case where some queries miss
    chunked, _, _ = recall_at_1(emb, labels, chunk=7)
    assert chunked == recall


def test_cross_model_recall_uses_the_other_models_gallery():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 50)
    student = rng.normal(size=(50, 6)) + 2 * np.eye(6)[labels]
    teacher = rng.normal(size=(50, 6)) + 2 * np.eye(6)[labels]
    mask = gallery_mask(labels)
    cross, queries, gallery = recall_at_1(student, labels, gallery_embeddings=teacher)
    assert cross == pytest.approx(reference_recall(student, labels, mask, teacher))
    with pytest.raises(ValueError, match="differ in shape"):
        recall_at_1(student, labels, gallery_embeddings=teacher[:, :4])


def test_recall_is_scale_invariant_and_perfect_on_separated_clusters():
    labels = np.repeat(np.arange(4), 6)
    emb = np.eye(4)[labels] + 0.01 * np.random.default_rng(0).normal(size=(24, 4))
    assert recall_at_1(emb, labels)[0] == 1.0
    assert recall_at_1(emb * np.arange(1, 25)[:, None], labels)[0] == 1.0


def test_classification_metrics_collects_everything():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 64)
    logits = rng.normal(size=(64, 10))
    emb = rng.normal(size=(64, 8))
    m = classification_metrics(logits, emb, labels)
    assert m["top1"] == pytest.approx(reference_topk(logits, labels, 1))
    assert m["top5"] == pytest.approx(reference_topk(logits, labels, 5))
    assert m["recall_at_1"] == pytest.approx(reference_recall(emb, labels, gallery_mask(labels)))
    assert m["images"] == 64 and m["queries"] + m["gallery"] == 64
