"""Label spaces: codebooks as data, targets with masks, checked against PTB-XL's own CSV."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.config import ConfigError
from common.labels import LabelSpace, builtin_spaces

SEED6 = ["NORM", "1AVB", "CRBBB", "CLBBB", "SBRAD", "STACH", "AFIB"]


def positives(space: LabelSpace, codes, coding: str = "scp") -> list[str]:
    y, _ = space.encode(codes, coding)
    return [lab for lab, v in zip(space.labels, y, strict=True) if v]


@pytest.fixture(scope="module")
def database(ptbxl_sample: Path) -> pd.DataFrame:
    db = pd.read_csv(ptbxl_sample / "ptbxl_database.csv", index_col="ecg_id")
    return db.assign(codes=db.scp_codes.map(lambda s: list(ast.literal_eval(s))))


def test_builtin_spaces_are_listed_and_load_by_name():
    assert {"seed6", "superclasses"} <= set(builtin_spaces())
    assert list(LabelSpace.load("seed6").labels) == SEED6
    assert list(LabelSpace.load("superclasses").labels) == ["NORM", "MI", "STTC", "CD", "HYP"]


def test_a_space_file_is_parsed_once_per_version(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nlabels: [A]\ncodebooks: {scp: {A: [X]}}\n")
    first = LabelSpace.load(path)
    assert LabelSpace.load(path) is first and LabelSpace.load("seed6") is LabelSpace.load("seed6")
    path.write_text("name: mine\nlabels: [A, B]\ncodebooks: {scp: {A: [X], B: [Y]}}\n")
    assert LabelSpace.load(path).labels == ("A", "B")  # an edited file is read again


def test_unknown_space_name_is_a_config_error_listing_the_builtins():
    with pytest.raises(ConfigError, match="unknown label space 'seed7'.*seed6"):
        LabelSpace.load("seed7")


@pytest.mark.parametrize(
    ("ecg_id", "labels"),
    [(2, ["NORM", "SBRAD"]), (195, ["CRBBB"]), (256, ["CLBBB"]), (102, ["1AVB"]), (17, ["AFIB"])],
)
def test_seed6_targets_of_real_ptbxl_rows(database, ecg_id, labels):
    space = LabelSpace.load("seed6")
    assert positives(space, database.loc[ecg_id].codes) == labels
    _, mask = space.encode(database.loc[ecg_id].codes, "scp")
    assert mask.tolist() == [1.0] * 7  # scp expresses every seed6 label


def test_seed6_counts_over_the_sample_match_the_csv(database):
    space = LabelSpace.load("seed6")
    y = np.stack([space.encode(codes, "scp")[0] for codes in database.codes])
    for label, count in zip(space.labels, y.sum(axis=0), strict=True):
        assert count == sum(label in codes for codes in database.codes), label


@pytest.mark.parametrize(
    ("ecg_id", "labels"),
    [
        (1, ["NORM"]),
        (8, ["MI"]),  # IMI
        (30, ["HYP"]),  # LVH
        (102, ["STTC", "CD"]),  # ISCAL, 1AVB
        (103, ["MI", "CD"]),  # IMI, LAFB
        (170, ["STTC"]),  # NST_; PVC is a rhythm statement
        (17, []),  # rhythm only
    ],
)
def test_superclass_targets_of_real_ptbxl_rows(database, ecg_id, labels):
    assert positives(LabelSpace.load("superclasses"), database.loc[ecg_id].codes) == labels


def test_superclass_codebook_agrees_with_scp_statements(ptbxl_sample):
    """Every diagnostic SCP statement sits under its own diagnostic_class, and nowhere else."""
    statements = pd.read_csv(ptbxl_sample / "scp_statements.csv", index_col=0)
    diagnostic = statements[statements.diagnostic == 1]
    space = LabelSpace.load("superclasses")
    for code, row in diagnostic.iterrows():
        assert positives(space, [code]) == [row.diagnostic_class], code


def test_codes_outside_the_space_are_ignored_not_errors():
    space = LabelSpace.load("seed6")
    assert positives(space, ["XYZ", "SR", "NORM"]) == ["NORM"]
    assert positives(space, []) == []


def test_coding_without_a_codebook_masks_everything():
    y, mask = LabelSpace.load("seed6").encode(["NORM"], "icd10")
    assert not y.any() and not mask.any()


def test_annotated_narrows_the_mask_and_zeroes_targets_outside_it():
    space = LabelSpace.load("seed6")
    y, mask = space.encode(["NORM", "AFIB", "CRBBB"], "scp", annotated=["AFIB", "SBRAD"])
    assert mask.tolist() == [0, 0, 0, 0, 1, 0, 1]
    assert y.tolist() == [0, 0, 0, 0, 0, 0, 1]  # NORM and CRBBB: unknown here, not positive


def test_annotated_cannot_widen_what_the_coding_expresses():
    space = LabelSpace.load("seed6")
    _, mask = space.encode(["426177001"], "snomed", annotated=["NORM", "SBRAD"])
    assert mask.tolist() == [0, 0, 0, 0, 1, 0, 0]


def test_to_dict_from_dict_round_trip_keeps_behaviour():
    for name in ("seed6", "superclasses"):
        space = LabelSpace.load(name)
        again = LabelSpace.from_dict(yaml.safe_load(yaml.safe_dump(space.to_dict())))
        assert again == space
        for codes, coding in ((["3.2.1.4", "2.2"], "tis"), (["NORM", "IMI"], "scp")):
            for a, b in zip(space.encode(codes, coding), again.encode(codes, coding), strict=True):
                assert a.tolist() == b.tolist()


def test_user_yaml_file_loads_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "labels": ["AF", "BBB"],
                "codebooks": {
                    "scp": {"AF": ["AFIB", "AFLT"], "BBB": ["CRBBB", "CLBBB"]},
                    "tis": {"AF": ["2.4", "2.5"]},
                },
                "hierarchical": ["tis"],
            }
        )
    )
    space = LabelSpace.load(path)
    assert space.name == "mine" and len(space) == 2
    assert positives(space, ["AFLT"]) == ["AF"]
    y, mask = space.encode(["2.5.1"], "tis")
    assert y.tolist() == [1, 0] and mask.tolist() == [1, 0]  # tis cannot express BBB here
    assert LabelSpace.load(str(path)) == space


VALID = {"name": "x", "labels": ["A", "B"], "codebooks": {"scp": {"A": ["a"], "B": ["b"]}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**VALID, "codebooks": {"scp": {"A": ["a"], "C": ["c"]}}}, "names label 'C', not in"),
        ({k: v for k, v in VALID.items() if k != "labels"}, "missing key 'labels'"),
        ({k: v for k, v in VALID.items() if k != "codebooks"}, "missing key 'codebooks'"),
        ({k: v for k, v in VALID.items() if k != "name"}, "missing key 'name'"),
        ({**VALID, "labels": ["A", "B", "A"]}, "without repeats"),
        ({**VALID, "labels": []}, "non-empty"),
        ({**VALID, "codebooks": {"scp": ["A", "a"]}}, "codebooks.scp must map label"),
        (["not", "a", "mapping"], "expected a mapping"),
        (
            {**VALID, "codebooks": {"scp": {"A": "a1", "B": ["b"]}}},
            r"codebooks.scp.A: expected a list",
        ),
        ({**VALID, "labels": "AB"}, "labels: expected a list"),
        ({**VALID, "hierarchical": "scp"}, "hierarchical: expected a list"),
    ],
)
def test_bad_label_space_file_is_a_config_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as exc:
        LabelSpace.load(path)
    assert str(path) in str(exc.value)


def test_invalid_yaml_and_missing_file_are_config_errors_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("labels: [A, B\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot read label space"):
        LabelSpace.load(path)
    with pytest.raises(ConfigError, match="absent.yaml: cannot read label space"):
        LabelSpace.load(tmp_path / "absent.yaml")
