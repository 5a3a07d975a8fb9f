"""Training manifest: reading, readers' labels and agreement, patient-level splits."""

from __future__ import annotations

import numpy as np
import pytest

from mammo_density.train import data as mdata


def write(tmp_path, text: str):
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


def test_reads_synth_superset_and_skips_extras(tmp_path):
    p = write(tmp_path, "exam_id,patient_id,study_instance_uid,sop_instance_uid,laterality,view,"
              "path,density,true_density,split,vendor,extra\n"
              "E1,P1,1.2,1.2.1,R,CC,E1/a.dcm,C,C,,hologic,\n"
              "E1,P1,1.2,1.2.2,L,MLO,E1/b.dcm,B,C,,hologic,\n"
              "E1,P1,1.2,1.2.3,R,CC,E1/c.dcm,C,C,,hologic,spot\n")
    recs = mdata.read_manifest_csv(p)
    assert [r.slot for r in recs] == ["R-CC", "L-MLO"]
    assert recs[0].path == tmp_path / "E1/a.dcm"
    assert recs[1].density == "B" and recs[1].fields["true_density"] == "C"
    truth = mdata.read_manifest_csv(p, label_column="true_density")
    assert truth[1].density == "C"
    assert mdata.exam_labels(recs) == {"E1": "C"}


def test_readers_consensus_and_soft_labels(tmp_path):
    p = write(tmp_path, "exam_id,patient_id,laterality,view,path,reader1,reader2,reader3\n"
              "E1,P1,R,CC,a.dcm,B,C,C\n"
              "E2,P2,R,CC,b.dcm,A,B,\n"
              "E3,P3,R,CC,c.dcm,DENSITY D,4,d\n")
    recs = mdata.read_manifest_csv(p)
    assert [r.density for r in recs] == ["C", "B", "D"]  # tie A/B -> denser
    assert recs[0].soft_target().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 0])
    assert recs[0].soft_target("dense2").tolist() == pytest.approx([1 / 3, 2 / 3])
    assert mdata.read_manifest_csv(p, consensus_method="median")[1].density == "A"
    p2 = write(tmp_path, "exam_id,patient_id,laterality,view,path,readers\nE1,P1,L,MLO,a,A;A;B\n")
    assert mdata.read_manifest_csv(p2)[0].density == "A"


@pytest.mark.parametrize("bad,msg", [
    ("E1,P1,X,CC,a.dcm,A", "laterality"),
    ("E1,P1,R,CC,a.dcm,Z", "density"),
    ("E1,P1,R,CC,a.dcm,", "no density label"),
])
def test_bad_rows_name_the_line(tmp_path, bad, msg):
    p = write(tmp_path, "exam_id,patient_id,laterality,view,path,density\n" + bad + "\n")
    with pytest.raises(mdata.ManifestError, match=rf"m.csv:2: .*{msg}"):
        mdata.read_manifest_csv(p)
    with pytest.raises(mdata.ManifestError, match="missing column"):
        mdata.read_manifest_csv(write(tmp_path, "exam_id,path\n1,a\n"))


def test_fleiss_and_reader_agreement():
    # Wikipedia's worked example of Fleiss' kappa (10 items, 14 raters, 5 classes): 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                      [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                      [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert mdata.fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)
    recs = [mdata.ImageRecord(f"E{i}", f"P{i}", "R", "CC", None, "A",  # type: ignore[arg-type]
                              readers=(a, b)) for i, (a, b) in
            enumerate([("A", "A"), ("B", "B"), ("C", "D"), ("D", "D")])]
    ag = mdata.reader_agreement(recs)
    assert ag["readers"] == 2 and ag["exams"] == 4
    assert ag["pairwise"]["reader1-reader2"]["agreement"] == 0.75
    assert 0 < ag["fleiss_kappa"] < 1


def make_records(n_patients: int, seed: int = 0) -> list[mdata.ImageRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        cls = "ABCD"[int(rng.choice(4, p=[0.13, 0.31, 0.46, 0.10]))]
        for e in range(1 + int(rng.integers(0, 2))):  # some women have two exams
            for slot in ("R-CC", "L-CC", "R-MLO", "L-MLO"):
                lat, view = slot.split("-")
                out.append(mdata.ImageRecord(f"P{p}E{e}", f"P{p}", lat, view, None,  # type: ignore[arg-type]
                                             cls))
    return out


def test_patient_split_is_disjoint_stratified_and_seeded():
    recs = mdata.patient_split(make_records(200), val=0.1, test=0.1, seed=3)
    mdata.check_patient_disjoint(recs)
    patients = {s: {r.patient_id for r in recs if r.split == s} for s in mdata.SPLITS}
    assert sum(len(v) for v in patients.values()) == 200
    assert 16 <= len(patients["test"]) <= 24 and 16 <= len(patients["val"]) <= 24
    # each class is represented in test roughly in proportion
    test_classes = {r.density for r in recs if r.split == "test"}
    assert test_classes == {"A", "B", "C", "D"}
    again = mdata.patient_split(make_records(200), val=0.1, test=0.1, seed=3)
    assert [r.split for r in again] == [r.split for r in recs]
    other = mdata.patient_split(make_records(200), val=0.1, test=0.1, seed=4)
    assert [r.split for r in other] != [r.split for r in recs]


def test_kfold_covers_every_patient_once():
    recs = make_records(50)
    folds = mdata.kfold_patients(recs, 5, seed=0)
    held = [h for _, h in folds]
    assert set().union(*held) == {r.patient_id for r in recs}
    assert sum(len(h) for h in held) == 50
    for train, h in folds:
        assert not train & h
    with pytest.raises(ValueError):
        mdata.kfold_patients(recs[:4], 5)


def test_check_patient_disjoint_raises():
    recs = make_records(2)
    recs[0].split, recs[1].split = "train", "test"
    with pytest.raises(ValueError, match="patient-level"):
        mdata.check_patient_disjoint(recs)


def test_cli_reports_a_bad_manifest(tmp_path, capsys):
    from mammo_density.cli import main

    assert main(["train", "--manifest", str(tmp_path / "missing.csv"), "--out",
                 str(tmp_path / "o")]) == 2
    bad = write(tmp_path, "exam_id,patient_id,laterality,view,path,density\nE,P,R,CC,a,Q\n")
    assert main(["train", "--manifest", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "m.csv:2" in capsys.readouterr().err
    assert main(["evaluate", "--manifest", str(bad), "--run", str(tmp_path)]) == 2
