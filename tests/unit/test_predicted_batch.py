"""One model batch's predictions as Arrow columns (spark_jobs.score.predicted_batch): the rows
that decoded get their label, score, probabilities, top-k and embedding; the others are null with
their error, in input order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.model_store import Manifest
from spark_jobs.models import BatchOutput
from spark_jobs.score import PREDICTION_FIELDS, DecodedBatch, predicted_batch

LABELS = ["cat", "dog", "fox", "owl"]
# one row per decoded image, written out by hand (not computed by the code under test)
PROBABILITIES = np.array([[0.1, 0.6, 0.2, 0.1], [0.4, 0.1, 0.1, 0.4], [0.05, 0.05, 0.7, 0.2]], dtype=np.float32)
EMBEDDINGS = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)


class FixedPredictor:
    def __init__(self, embedding: bool) -> None:
        self.manifest = Manifest(
            name="fixed", framework="pytorch", architecture="fake", input_size=2, labels=LABELS, version="1"
        )
        self.embedding = embedding
        self.seen: list[int] = []

    def forward(self, batch: np.ndarray) -> BatchOutput:
        self.seen.append(len(batch))
        return BatchOutput(PROBABILITIES[: len(batch)], EMBEDDINGS[: len(batch)] if self.embedding else None)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch).probabilities


def _batch(ok_rows: list[int], size: int) -> DecodedBatch:
    errors = [None if row in ok_rows else f"cannot decode mem://{row}: broken" for row in range(size)]
    return DecodedBatch(size, np.zeros((len(ok_rows), 3, 2, 2), dtype=np.float32), ok_rows, errors)


def test_decoded_rows_get_their_predictions_and_the_others_their_error_in_input_order() -> None:
    predictor = FixedPredictor(embedding=True)
    result = predicted_batch(predictor, _batch([0, 2, 4], size=5), top_k=2)

    assert result.schema.names == list(PREDICTION_FIELDS)
    rows = result.to_pylist()
    assert predictor.seen == [3]  # only the decoded images reached the model
    assert [r["label"] for r in rows] == ["dog", None, "cat", None, "fox"]
    broken = ["cannot decode mem://1: broken", "cannot decode mem://3: broken"]
    assert [r["error"] for r in rows] == [None, broken[0], None, broken[1], None]
    assert [r["top_k"] for r in rows] == [
        [{"label": "dog", "score": np.float32(0.6)}, {"label": "fox", "score": np.float32(0.2)}],
        None,
        # a tie keeps the labels' order: cat before owl
        [{"label": "cat", "score": np.float32(0.4)}, {"label": "owl", "score": np.float32(0.4)}],
        None,
        [{"label": "fox", "score": np.float32(0.7)}, {"label": "owl", "score": np.float32(0.2)}],
    ]
    assert [r["score"] for r in rows] == [np.float32(0.6), None, np.float32(0.4), None, np.float32(0.7)]
    assert rows[2]["probabilities"] == [np.float32(v) for v in (0.4, 0.1, 0.1, 0.4)]
    assert rows[1]["probabilities"] is None
    assert [r["embedding"] for r in rows] == [[1.0, 2.0], None, [3.0, 4.0], None, [5.0, 6.0]]


def test_the_columns_have_the_types_spark_reads() -> None:
    result = predicted_batch(FixedPredictor(embedding=False), _batch([0, 1, 2], size=3), top_k=10)

    assert result.schema.field("score").type == pa.float32()
    assert result.schema.field("probabilities").type.value_type == pa.float32()
    assert result.schema.field("top_k").type.value_type == pa.struct([("label", pa.string()), ("score", pa.float32())])
    assert result.column("embedding").null_count == 3  # the manifest names no embedding layer
    assert [len(top) for top in result.column("top_k").to_pylist()] == [4, 4, 4]  # k is at most the labels


def test_a_batch_where_nothing_decoded_is_all_errors() -> None:
    predictor = FixedPredictor(embedding=False)
    batch = DecodedBatch(2, None, [], ["cannot decode a: x", "cannot decode b: y"])

    rows = predicted_batch(predictor, batch, top_k=3).to_pylist()

    assert predictor.seen == []
    assert [r["error"] for r in rows] == ["cannot decode a: x", "cannot decode b: y"]
    assert all(r[name] is None for r in rows for name in PREDICTION_FIELDS[:-1])


@pytest.mark.parametrize("classes", [3, 12, 50, 1000])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_indices_match_a_stable_sort_of_whole_rows_ties_and_nans_included(classes: int, k: int) -> None:
    from spark_jobs.score import top_k_indices

    rng = np.random.default_rng(classes * 10 + k)
    smooth = rng.random((64, classes)).astype(np.float32)
    tied = np.round(rng.random((64, classes)) * 4).astype(np.float32) / 4  # many equal values per row
    probs = np.concatenate([smooth, tied])
    probs[5, : classes // 2] = np.nan
    probs[6] = 0.25  # a whole row of one value
    expected = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, classes)]
    np.testing.assert_array_equal(top_k_indices(probs, min(k, classes)), expected)
