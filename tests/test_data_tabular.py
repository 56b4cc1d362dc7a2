"""The generic interaction folder: CSV and Parquet, and every bad input named precisely."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from common.data import DataError, load_dataset, load_interaction_folder

ITEMS = 'item_id,text,price\nB7,"Kettle, steel.\nBoils fast",12\nA1,Green tea,3\nZ9,Mug,5\n007,Lid,1\n'
INTERACTIONS = (
    "user_id,item_id,timestamp,rating\n"
    "alice,Z9,2021-03-01T10:00:00Z,5\n"  # ties at this second: file order Z9, A1, B7
    "bob,A1,1614592800,4\n"
    "alice,A1,1614592800,3\n"  # same instant as the ISO row above, written as seconds
    "alice,B7,2021-03-01T11:00:00+01:00,4\n"  # again the same instant, with an offset
    "alice,007,2021-02-28,2\n"
)


def write(folder: Path, items: str = ITEMS, inter: str = INTERACTIONS, users: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text(items)
    (folder / "interactions.csv").write_text(inter)
    if users is not None:
        (folder / "users.csv").write_text(users)
    return folder


def test_csv_folder_loads_ids_as_strings_and_keeps_file_order_on_ties(tmp_path):
    d = load_interaction_folder(write(tmp_path / "shop", users="user_id,region\nalice,north\ncarol,west\n"))
    assert d.item_ids == ["B7", "A1", "Z9", "007"]  # "007" stays a string id
    assert d.item_text[0] == "Kettle, steel.\nBoils fast"
    assert d.user_ids == ["alice", "bob"]
    t0 = 1614592800
    assert d.timestamps[0].tolist() == [t0 - 34 * 3600, t0, t0, t0]
    # sorting ties by id would give A1, B7, Z9 (1, 0, 2); the file says Z9, A1, B7
    assert d.sequences[0].tolist() == [3, 2, 1, 0]
    assert d.ratings[0].tolist() == [2, 5, 3, 4]
    assert d.user_attributes["region"].tolist() == ["north", "unknown"]
    assert d.stats["users_without_attributes"] == 1


def test_parquet_folder_with_native_timestamps_matches_csv(tmp_path):
    csv = load_interaction_folder(write(tmp_path / "a"))
    folder = tmp_path / "b"
    folder.mkdir()
    pd.read_csv(tmp_path / "a" / "items.csv", dtype=str).to_parquet(folder / "items.parquet")
    when = ["2021-03-01T10:00Z", "2021-03-01T10:00Z", "2021-03-01T10:00Z", "2021-03-01T10:00Z", "2021-02-28"]
    pd.DataFrame(
        {
            "user_id": ["alice", "bob", "alice", "alice", "alice"],
            "item_id": ["Z9", "A1", "A1", "B7", "007"],
            "timestamp": pd.to_datetime(when, utc=True, format="ISO8601").astype("datetime64[ms, UTC]"),
            "rating": [5, 4, 3, 4, 2],
        }
    ).to_parquet(folder / "interactions.parquet")
    pq = load_interaction_folder(folder)
    assert pq.item_ids == csv.item_ids and pq.user_ids == csv.user_ids
    assert [s.tolist() for s in pq.sequences] == [s.tolist() for s in csv.sequences]
    assert [t.tolist() for t in pq.timestamps] == [t.tolist() for t in csv.timestamps]


def test_load_dataset_dispatches_csv(tmp_path):
    assert load_dataset("csv", str(write(tmp_path / "x"))).num_items == 4
    with pytest.raises(DataError, match="dataset.path"):
        load_dataset("csv")
    with pytest.raises(DataError, match="unknown dataset 'amazon'"):
        load_dataset("amazon", "x")
    with pytest.raises(DataError, match="num_users"):
        load_dataset("csv", str(tmp_path / "x"), num_users=5)


@pytest.mark.parametrize(
    "items, inter, expected",
    [
        ("item_id,title\n1,a\n", INTERACTIONS, r"items\.csv: missing required column 'text'"),
        (ITEMS, "user_id,item_id\nu,A1\n", r"interactions\.csv: missing required column 'timestamp'"),
        (ITEMS, "user_id,item_id,timestamp\nu,A1,5\nu,A1\n", r"interactions\.csv, line 3: expected 3 fields"),
        (
            ITEMS,
            "user_id,item_id,timestamp\n\nu,A1,5\nu,A1,yesterday\n",
            r"interactions\.csv, line 4: unparsable timestamp 'yesterday'",
        ),
        (ITEMS, "user_id,item_id,timestamp\nu,A1,5\n,A1,6\n", r"interactions\.csv, line 3: empty user_id"),
        (ITEMS, "user_id,item_id,timestamp,rating\nu,A1,5,x\n", r"interactions\.csv, line 2: rating is not"),
        (
            ITEMS,
            "user_id,item_id,timestamp\nu,A1,5\nu,Q5,6\n",
            r"interactions\.csv, line 3: item_id 'Q5' is not in items\.csv",
        ),
        # items lines count the quoted two-line text of B7 (lines 2-3), as an editor does
        (ITEMS + 'C3,"  ",1\n', INTERACTIONS, r"items\.csv, line 7: empty text"),
        (ITEMS + "A1,Again,2\n", INTERACTIONS, r"items\.csv, line 7: duplicate item_id 'A1' \(first at line 4\)"),
        (ITEMS, "user_id,item_id,timestamp\n", r"interactions\.csv: no interactions"),
    ],
)
def test_bad_inputs_name_file_line_and_value(tmp_path, items, inter, expected):
    with pytest.raises(DataError, match=expected) as e:
        load_interaction_folder(write(tmp_path / "bad", items, inter))
    assert "\n" not in str(e.value)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_interaction_folder(tmp_path / "none")
    folder = write(tmp_path / "f")
    (folder / "interactions.csv").unlink()
    with pytest.raises(DataError, match=r"missing interactions\.csv"):
        load_interaction_folder(folder)
    (folder / "items.csv").unlink()
    with pytest.raises(DataError, match=r"missing items\.csv"):
        load_interaction_folder(folder)


def test_users_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"users\.csv: missing required column 'user_id'"):
        load_interaction_folder(write(tmp_path / "a", users="id,region\nalice,n\n"))
    with pytest.raises(DataError, match=r"users\.csv, line 3: duplicate user_id 'alice'"):
        load_interaction_folder(write(tmp_path / "b", users="user_id,region\nalice,n\nalice,s\n"))


def test_parquet_problems_name_the_row(tmp_path):
    folder = write(tmp_path / "p")
    (folder / "interactions.csv").unlink()
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["A1", "B7"], "timestamp": ["5", "noon"]}).to_parquet(
        folder / "interactions.parquet"
    )
    with pytest.raises(DataError, match=r"interactions\.parquet, row 2: unparsable timestamp 'noon'"):
        load_interaction_folder(folder)


def test_repeats_are_kept_and_counted_and_rating_is_optional(tmp_path):
    inter = "user_id,item_id,timestamp\n1,A1,10\n1,A1,20\n1,Z9,30\n2,Z9,5\n"
    d = load_interaction_folder(write(tmp_path / "r", inter=inter))
    assert d.ratings is None and d.user_attributes is None
    assert d.sequences[0].tolist() == [1, 1, 2]
    assert (d.stats["repeat_interactions"], d.stats["items_without_interactions"]) == (1, 2)


# --- W2-2: inputs that used to pass silently ------------------------------------------------
@pytest.mark.parametrize(
    "header, message",
    [
        ("user_id,item_id,timestamp,timestamp", "column 'timestamp' appears twice (columns 3 and 4)"),
        ("user_id,item_id,user_id,timestamp", "column 'user_id' appears twice (columns 1 and 3)"),
        ("user_id;item_id;timestamp", "is one column: the file is separated by semicolons"),
        ("user_id\titem_id\ttimestamp", "is one column: the file is separated by tabs"),
    ],
)
def test_a_repeated_column_or_a_wrong_delimiter_is_refused_naming_file_and_line(tmp_path, header, message):
    sep = ";" if ";" in header else ("\t" if "\t" in header else ",")
    fields = len(header.split(sep))
    row = sep.join(["alice", "A1", "1614592800", "1614592801"][:fields])
    folder = write(tmp_path / "shop", inter=f"{header}\n{row}\n")
    with pytest.raises(DataError) as e:
        load_interaction_folder(folder)
    assert str(e.value).startswith(f"{folder / 'interactions.csv'}, line 1: ") and message in str(e.value)


@pytest.mark.parametrize("token", ["nan", "NaN", "NULL", "None", "N/A", "#N/A", "NA"])
@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_missing_value_markers_are_not_ids(tmp_path, token, column):
    row = {"user_id": "alice", "item_id": "A1", "timestamp": "1614592800"}
    row[column] = token
    inter = INTERACTIONS + ",".join(row.values()) + ",4\n"
    folder = write(tmp_path / "shop", inter=inter)
    with pytest.raises(DataError, match=rf"interactions.csv, line 7: {column} '{token}' is a missing-value marker"):
        load_interaction_folder(folder)


def test_an_integer_id_written_as_a_float_is_the_same_id_in_every_file(tmp_path):
    items = "item_id,text\n244.0,Lamp\n245,Desk\n"
    inter = "user_id,item_id,timestamp\n7,244,1\n7.0,245,2\n8,244.00,3\n"
    d = load_interaction_folder(
        write(tmp_path / "shop", items=items, inter=inter, users="user_id,region\n7.0,north\n8,south\n")
    )
    assert d.item_ids == ["244", "245"] and d.user_ids == ["7", "8"]
    assert d.sequences[0].tolist() == [0, 1]  # both of user 7's rows, whatever their spelling
    assert d.user_attributes["region"].tolist() == ["north", "south"]  # attributes not dropped
    # "007" is not a float spelling: it stays its own id
    assert load_interaction_folder(write(tmp_path / "b")).item_ids[-1] == "007"


def test_a_users_file_that_matches_no_interaction_user_is_refused(tmp_path):
    folder = write(tmp_path / "shop", users="user_id,region\nu-alice,north\nu-bob,west\n")
    with pytest.raises(
        DataError,
        match=r"users.csv: none of its user_ids appear in interactions.csv \(e.g. "
        r"'u-alice' in users.csv, 'alice' in interactions.csv\)",
    ):
        load_interaction_folder(folder)
