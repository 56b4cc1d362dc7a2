"""MovieLens loaders on fabricated files in the original formats (never real MovieLens rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data import DataError, leave_one_out, load_dataset, load_movielens_1m, load_movielens_100k

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_100k(folder: Path, data_rows: list[str] | None = None, genre_file: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        f"1|Robot Garden (1994)|01-Jan-1994||http://example.org/1|{_flags('Animation', 'Comedy')}",
        f"2|Café Lumière (1997)|01-Jan-1997||http://example.org/2|{_flags('Drama')}",
        f"3|Night Train (2001)|01-Jan-2001||http://example.org/3|{_flags('Thriller', 'Crime')}",
        f"4|Lonely Catalogue Entry (1990)|01-Jan-1990||http://example.org/4|{_flags()}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("7|24|M|technician|85711\n9|53|F|other|T8H1N\n")
    if genre_file:
        (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    rows = data_rows or [
        # user 7: ties at t=200 must keep file order (3 then 1), not item-id order (1 then 3)
        "7\t3\t4\t200",
        "9\t2\t5\t50",
        "7\t2\t3\t100",
        "7\t1\t5\t200",
        "9\t1\t1\t60",
    ]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return folder


def write_1m(folder: Path, ratings: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.dat").write_bytes(
        "10::Paper Moons (1988)::Comedy|Romance\n20::Señor Blue (1999)::Drama\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    if ratings:
        (folder / "ratings.dat").write_text("2::20::4::500\n1::10::5::300\n1::20::2::300\n")
    return folder


def test_100k_fixture_loads_with_text_attributes_and_file_order_ties(tmp_path):
    d = load_movielens_100k(write_100k(tmp_path / "ml"))
    assert (d.num_users, d.num_items) == (2, 4)
    assert d.item_ids == ["1", "2", "3", "4"]  # item 4 has no ratings yet stays in the catalogue
    assert d.item_text[0] == "Robot Garden (1994). Genres: Animation, Comedy"
    assert d.item_text[1] == "Café Lumière (1997). Genres: Drama"  # latin-1 decoded
    assert d.item_text[3] == "Lonely Catalogue Entry (1990)."
    assert d.user_ids == ["7", "9"]  # order of first appearance in u.data
    assert d.sequences[0].tolist() == [1, 2, 0]  # items 2, 3, 1: the tie keeps file order
    assert d.timestamps[0].tolist() == [100, 200, 200]
    assert d.ratings[0].tolist() == [3.0, 4.0, 5.0]
    attrs = d.user_attributes
    assert attrs.loc[0, ["gender", "age", "age_group", "occupation", "zip", "region"]].tolist() == [
        "M",
        24,
        "18-24",
        "technician",
        "85711",
        "zip8",
    ]
    assert attrs.loc[1, "region"] == "other"  # non-US postcode
    assert d.stats["items_without_interactions"] == 1


def test_100k_without_u_genre_uses_builtin_genre_names(tmp_path):
    d = load_movielens_100k(write_100k(tmp_path / "ml", genre_file=False))
    assert d.item_text[2] == "Night Train (2001). Genres: Crime, Thriller"


def test_1m_fixture_loads_with_decoded_codes(tmp_path):
    d = load_movielens_1m(write_1m(tmp_path / "ml1m"))
    assert d.item_text == ["Paper Moons (1988). Genres: Comedy, Romance", "Señor Blue (1999). Genres: Drama"]
    assert d.user_ids == ["2", "1"]
    assert [s.tolist() for s in d.sequences] == [[1], [0, 1]]  # tie at 300 keeps file order
    a = d.user_attributes
    assert a.loc[1, ["gender", "age", "age_group", "occupation"]].tolist() == ["F", 1, "Under 18", "K-12 student"]
    assert a.loc[0, ["age_group", "occupation", "region"]].tolist() == ["56+", "self-employed", "zip7"]


@pytest.mark.parametrize("missing", ["u.data", "u.item", "u.user"])
def test_100k_missing_file_names_it_and_says_where_to_get_it(tmp_path, missing):
    folder = write_100k(tmp_path / "ml")
    (folder / missing).unlink()
    with pytest.raises(DataError) as e:
        load_movielens_100k(folder)
    msg = str(e.value)
    assert str(folder / missing) in msg and "grouplens.org/datasets/movielens" in msg
    assert "redistribut" in msg and "\n" not in msg


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="folder not found.*nowhere"):
        load_movielens_1m(tmp_path / "nowhere")


def test_1m_without_ratings_names_ratings_dat(tmp_path):
    folder = write_1m(tmp_path / "ml1m", ratings=False)
    with pytest.raises(DataError, match=r"ratings\.dat"):
        load_movielens_1m(folder)


@pytest.mark.parametrize(
    "rows, expected",
    [
        (["7\t1\t5\t10", "7\t2\t5"], r"u\.data, line 2: expected 4"),
        (["7\t1\t5\t10", "7\t2\t5\tsoon"], r"u\.data, line 2: timestamp is not an integer"),
        (["7\t1\tgood\t10"], r"u\.data, line 1: rating is not a number"),
        (["7\t1\t5\t10", "", "7\t99\t5\t11"], r"u\.data, line 3: unknown item id 99"),
        (["8\t1\t5\t10"], r"u\.data, line 1: unknown user id 8"),
    ],
)
def test_100k_bad_rows_name_file_and_line(tmp_path, rows, expected):
    with pytest.raises(DataError, match=expected):
        load_movielens_100k(write_100k(tmp_path / "ml", data_rows=rows))


def test_1m_malformed_movie_row(tmp_path):
    folder = write_1m(tmp_path / "ml1m")
    (folder / "movies.dat").write_text("10::Paper Moons (1988)::Comedy\n11::No genres field\n")
    with pytest.raises(DataError, match=r"movies\.dat, line 2: expected 3"):
        load_movielens_1m(folder)


def test_real_ml100k_counts():
    folder = SHARED / "ml-100k"
    if not (folder / "u.data").is_file():
        pytest.skip("ml-100k not present in ../shared/data")
    d = load_dataset("movielens_100k", str(folder))
    assert (d.num_users, d.num_items) == (943, 1682)
    assert sum(len(s) for s in d.sequences) == 100_000
    assert d.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert all(np.all(np.diff(t) >= 0) for t in d.timestamps)
    assert leave_one_out(d).stats["users_dropped"] == 0  # every ML-100K user has >= 20 ratings


def test_real_ml1m_copy_lacks_ratings():
    folder = SHARED / "ml-1m"
    if not folder.is_dir():
        pytest.skip("ml-1m folder not present in ../shared/data")
    if (folder / "ratings.dat").exists():
        pytest.skip("this ml-1m copy is complete")
    with pytest.raises(DataError, match=r"ml-1m/ratings\.dat"):
        load_dataset("movielens_1m", str(folder))
