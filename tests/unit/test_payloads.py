"""XCom payloads: the round trip, and a clear error for a value that lacks a field."""

from __future__ import annotations

import pytest

from mlops_sagemaker.payloads import ExtractManifest, GateResult, PayloadError, StagedCode


def test_round_trip_keeps_every_field() -> None:
    staged = StagedCode("v1", "s3://b/scripts/", "s3://b/src.tar.gz", "image:1", "eu-west-1")
    assert StagedCode.from_xcom(staged.as_xcom()) == staged


def test_missing_field_names_the_payload_and_the_field() -> None:
    with pytest.raises(PayloadError, match=r"GateResult: XCom value lacks evaluation_uri, value"):
        GateResult.from_xcom({"metric": "auc", "threshold": 0.7, "baseline": {}})
    with pytest.raises(PayloadError, match="expected a mapping"):
        StagedCode.from_xcom(None)


def test_manifest_fingerprint_changes_with_the_data_only() -> None:
    parts = [{"key": "p/part-00000.csv.gz", "rows": 3, "sha256": "aa"}]
    columns = [{"name": "k", "presto_type": "bigint", "arrow_type": "int64"}]
    manifest = ExtractManifest("s3://b/p/", 3, parts, columns, started_at="t1")
    rerun = ExtractManifest.from_xcom({**manifest.as_xcom(), "started_at": "t2", "extra": 1})
    assert rerun.data_fingerprint() == manifest.data_fingerprint()
    changed = ExtractManifest("s3://b/p/", 3, [{**parts[0], "sha256": "bb"}], columns)
    assert changed.data_fingerprint() != manifest.data_fingerprint()
    assert manifest.column_names == ["k"]
