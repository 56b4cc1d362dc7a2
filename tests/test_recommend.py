"""fedrec recommend: top-K unseen items from a trained run's adapter, via the API and the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from common.config import compose
from common.data.run import load_run_data
from common.evaluation import user_scores
from common.model.factory import build_model
from common.recommend import Recommender, RecommendError, recommend
from common.serialization import load_adapter
from simulations.cli import recommend as recommend_cli
from simulations.run import execute

SMALL = [
    "dataset.num_users=90",
    "dataset.num_items=60",
    "dataset.mean_interactions=12",
    "partition.num_clients=3",
    "model.num_negatives=16",
    "train.epochs=2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recommend")
    cfg = compose([*SMALL, f"cache_dir={tmp / 'cache'}", "baseline=centralized", "privacy=none", "device=cpu"])
    out = tmp / "run"
    execute(cfg, [], out)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    return cfg, out


def independent_scores(cfg, out, user_index):
    """The model's own scores, rebuilt through the training code path, for one user."""
    run = load_run_data(cfg)
    model = build_model(cfg, run)
    load_adapter(model, out / "adapter")
    items, bias = model.item_vectors(run.data.num_items), model.item_bias(run.data.num_items)
    return run.data, user_scores(model, items, [run.data.sequences[user_index]], bias)[0].numpy()


@pytest.mark.parametrize("user_index", [0, 7])
def test_recommend_returns_the_models_top_unseen_items(trained, user_index):
    cfg, out = trained
    data, scores = independent_scores(cfg, out, user_index)
    user = data.user_ids[user_index]
    recs = recommend(out, None, user, k=10)
    assert [r["rank"] for r in recs] == list(range(1, 11))
    ids = [r["item_id"] for r in recs]
    assert len(set(ids)) == 10 and set(ids) <= set(data.item_ids)
    idx = [data.item_ids.index(i) for i in ids]
    history = set(data.sequences[user_index].tolist())  # train + valid + test: the whole history
    assert not history & set(idx)
    got = np.array([r["score"] for r in recs])
    assert np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, scores[idx], rtol=1e-5, atol=1e-6)
    # Nothing unseen scores above the 10th item: it really is the top 10.
    unseen = np.setdiff1d(np.arange(data.num_items), list(history))
    assert np.sort(scores[unseen])[-10] == pytest.approx(got[-1], abs=1e-5)
    assert [r["text"] for r in recs] == [data.item_text[i] for i in idx]


def test_recommender_loads_once_and_matches_recommend(trained):
    _, out = trained
    rec = Recommender(out / "adapter")  # the adapter/ subfolder works as well as the run folder
    for user in ("u00000", "u00003", "u00042"):
        assert rec.recommend(user, 5) == recommend(out, None, user, 5)
    assert len(rec.recommend("u00003", 1)) == 1


def test_bad_k_and_unknown_user_are_one_line_errors(trained):
    _, out = trained
    rec = Recommender(out)
    unseen = rec.num_items - len(np.unique(rec.history("u00001")))
    assert len(rec.recommend("u00001", unseen)) == unseen  # every unseen item can be asked for
    for k in (0, unseen + 1):
        with pytest.raises(RecommendError, match=rf"k={k}: must be between 1 and {unseen}"):
            rec.recommend("u00001", k)
    with pytest.raises(RecommendError, match=r"unknown user id 'nobody'.*dataset=synthetic") as e:
        rec.recommend("nobody")
    assert "\n" not in str(e.value)


def test_cli_prints_k_rows_and_json(trained, capsys):
    _, out = trained
    assert recommend_cli.main(["--adapter", str(out), "--user", "u00002", "-k", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 7 and [int(r.split()[0]) for r in rows] == list(range(1, 8))
    assert all(len(r) <= 4 + 2 + 6 + 2 + 8 + 2 + 70 for r in rows)
    assert recommend_cli.main(["--adapter", str(out / "adapter"), "--user", "u00002", "-k", "7", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["user_id"] == "u00002" and len(doc["items"]) == 7
    assert [r["item_id"] for r in doc["items"]] == [r.split()[1] for r in rows]


def test_cli_unknown_user_exits_2_with_one_line(trained, capsys):
    _, out = trained
    assert recommend_cli.main(["--adapter", str(out), "--user", "ghost42"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ghost42" in err[0]


def test_cli_data_folder_is_refused_for_synthetic_runs(trained, tmp_path, capsys):
    _, out = trained
    assert recommend_cli.main(["--adapter", str(out), "--data", str(tmp_path), "--user", "u00000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic" in err[0]


def test_catalogue_mismatch_names_both_sizes(trained, tmp_path, capsys):
    _, out = trained
    # The same adapter next to a config whose data has a different catalogue (70 items, not 60).
    other = tmp_path / "other"
    shutil.copytree(out / "adapter", other / "adapter")
    conf = yaml.safe_load((out / "config.yaml").read_text())
    conf["dataset"]["num_items"] = 70
    (other / "config.yaml").write_text(yaml.safe_dump(conf))
    assert recommend_cli.main(["--adapter", str(other), "--user", "u00000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "catalogue mismatch" in err[0] and "60 items" in err[0] and "has 70" in err[0]
    # The Python API: the data given as a config (dataset block) instead of a folder.
    with pytest.raises(RecommendError, match=r"trained on 60 items.*has 50"):
        recommend(out, {"dataset": {"num_items": 50}}, "u00000")


def test_text_dim_mismatch_is_a_one_line_error(trained, tmp_path):
    _, out = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    conf_path = other / "adapter" / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["text_dim"] = 768
    conf_path.write_text(json.dumps(conf))
    with pytest.raises(RecommendError, match=r"text_dim 768.*gives 384") as e:
        Recommender(other)
    assert "\n" not in str(e.value)


def test_works_on_cpu(trained):
    _, out = trained
    rec = Recommender(out, device="cpu")
    assert rec.item_vectors.device == torch.device("cpu")


def write_csv_folder(folder, num_items):
    """A csv data folder from small synthetic data (dataset=csv needs files)."""
    from common.data import make_synthetic

    data = make_synthetic(num_users=60, num_items=num_items, mean_interactions=10, seed=1)
    folder.mkdir(parents=True)
    with open(folder / "items.csv", "w") as f:
        f.write("item_id,text\n" + "".join(f'{i},"{t}"\n' for i, t in zip(data.item_ids, data.item_text)))
    with open(folder / "interactions.csv", "w") as f:
        f.write("user_id,item_id,timestamp\n")
        for u, seq, ts in zip(data.user_ids, data.sequences, data.timestamps):
            f.writelines(f"{u},{data.item_ids[i]},{t}\n" for i, t in zip(seq, ts))
    return data


def test_csv_run_reads_the_data_folder_given_with_data(tmp_path, capsys):
    data = write_csv_folder(tmp_path / "shop", num_items=50)
    cfg = compose(
        [
            *SMALL[3:],
            f"cache_dir={tmp_path / 'cache'}",
            "dataset=csv",
            f"dataset.path={tmp_path / 'shop'}",
            "baseline=centralized",
            "privacy=none",
            "device=cpu",
        ]
    )
    out = tmp_path / "run"
    execute(cfg, [], out)
    # The data moved: the run's own dataset.path is gone, --data points at the new place.
    shutil.move(tmp_path / "shop", tmp_path / "moved")
    assert recommend_cli.main(["--adapter", str(out), "--user", "u00004", "-k", "3"]) == 2
    assert "shop" in capsys.readouterr().err
    assert (
        recommend_cli.main(
            ["--adapter", str(out), "--data", str(tmp_path / "moved"), "--user", "u00004", "-k", "3", "--json"]
        )
        == 0
    )
    items = json.loads(capsys.readouterr().out)["items"]
    assert len(items) == 3 and not {r["item_id"] for r in items} & {data.item_ids[i] for i in data.sequences[4]}
    # A different catalogue in the folder given: refused, naming both sizes.
    write_csv_folder(tmp_path / "bigger", num_items=56)
    assert recommend_cli.main(["--adapter", str(out), "--data", str(tmp_path / "bigger"), "--user", "u00004"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on 50 items" in err[0] and "has 56" in err[0] and "bigger" in err[0]


def test_a_reordered_catalogue_of_the_same_size_is_refused(trained, tmp_path):
    _, out = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    stored = json.loads((copy / "adapter" / "adapter_config.json").read_text())
    assert "items_sha256" in stored
    stored["items_sha256"] = "0" * 64  # as if trained on another order of the same items
    (copy / "adapter" / "adapter_config.json").write_text(json.dumps(stored))
    with pytest.raises(RecommendError, match="not the same item ids"):
        Recommender(copy)
