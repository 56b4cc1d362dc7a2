"""Generated data for offline runs and tests: items whose text reveals their topic.

Built so that each part of the model has something to learn: the text carries the topic
(a text encoder can beat popularity), order carries signal (topics are sticky from one
interaction to the next, so a sequence model beats a bag of items), popularity is skewed
(so the popularity baseline is a real floor), user activity is long-tailed and preferences
correlate with ``region`` (so attribute silos are non-IID, as real organisations are).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.data.types import DataError, InteractionData

TOPICS: dict[str, list[str]] = {
    "space": "galaxy rocket orbit planet astronaut comet nebula telescope satellite asteroid "
    "cosmos lunar solar gravity meteor launch starship eclipse",
    "cooking": "recipe kitchen bread pasta garlic oven soup spice butter flavor dessert "
    "chef bakery sauce roast noodle pastry cinnamon",
    "sports": "football soccer tennis stadium athlete marathon coach trophy league "
    "basketball goal referee sprint champion cycling tournament hockey medal",
    "music": "guitar piano melody concert symphony orchestra singer rhythm jazz album "
    "chorus drum violin ballad lyric tempo opera harmony",
    "gardening": "garden flower seed soil compost tulip rose orchard greenhouse shrub "
    "bloom harvest lawn fern pruning vegetable meadow blossom",
    "finance": "money budget investment stock bank savings loan market dividend "
    "portfolio credit mortgage tax interest wealth pension bond trader",
    "history": "empire ancient castle medieval dynasty war kingdom pharaoh revolution "
    "archive monarch knight treaty century battle ruins chronicle emperor",
    "ocean": "sea whale coral reef tide sailor island shark harbor dolphin wave "
    "lighthouse voyage anchor lagoon shipwreck current seashell",
    "technology": "computer software robot algorithm network data chip startup code "
    "gadget internet laptop cloud engineer digital processor app circuit",
    "travel": "passport journey hotel airport luggage adventure backpack tourist map "
    "train vacation road ferry border guidebook souvenir hostel itinerary",
    "health": "doctor medicine fitness nutrition hospital vitamin therapy heart sleep "
    "yoga nurse vaccine diet muscle clinic wellness cardio recovery",
    "art": "painting canvas sculpture gallery museum portrait brush artist sketch "
    "mural pottery palette watercolor exhibition ceramic mosaic easel charcoal",
}
TOPICS = {k: v.split() for k, v in TOPICS.items()}
# Shared by every topic, so items do not differ in wording alone but in topic vocabulary.
FILLER = (
    "story guide collection edition classic new complete little great life world simple "
    "modern essential secret day time home good best first last big small old"
).split()
GENDERS = ["F", "M"]
AGES = ["18-24", "25-34", "35-44", "45-54", "55+"]
REGIONS = ["north", "south", "east", "west", "central"]
_START = 1_577_836_800  # 2020-01-01 UTC


def make_synthetic(
    num_users: int = 600,
    num_items: int = 400,
    num_topics: int = 8,
    mean_interactions: int = 30,
    seed: int = 0,
) -> InteractionData:
    """Generate a data set; identical for the same arguments, different across seeds.

    ``stats["item_topic"]`` (list of topic numbers per item) and ``stats["topic_names"]``
    expose the hidden truth, so tests can check that the signal is there (a topic oracle
    beats popularity) and plots can colour items by topic. They are plain lists so the
    stats stay JSON-serialisable.
    """
    if not 1 <= num_topics <= len(TOPICS):
        raise DataError(f"num_topics must be between 1 and {len(TOPICS)}, got {num_topics}")
    if num_items < 2 * num_topics or num_users < 1 or mean_interactions < 1:
        raise DataError(
            f"need num_items >= 2*num_topics, num_users >= 1, mean_interactions >= 1 "
            f"(got {num_items}, {num_users}, {mean_interactions})"
        )
    rng = np.random.default_rng(seed)
    names = list(TOPICS)[:num_topics]

    item_topic = rng.permutation(np.arange(num_items) % num_topics)
    # Zipf within each topic: a random rank per item, weight 1/rank.
    popularity = np.empty(num_items)
    for t in range(num_topics):
        members = np.flatnonzero(item_topic == t)
        popularity[members] = 1.0 / rng.permutation(np.arange(1, len(members) + 1)) ** 1.2
    item_text = [_item_text(rng, names, int(t)) for t in item_topic]

    attrs = pd.DataFrame(
        {
            "gender": rng.choice(GENDERS, num_users),
            "age": rng.choice(AGES, num_users, p=[0.2, 0.3, 0.25, 0.15, 0.1]),
            "region": rng.choice(REGIONS, num_users, p=[0.3, 0.25, 0.2, 0.15, 0.1]),
        }
    )
    # Each region has a favourite topic that a user picks first with probability 0.4.
    region_topic = {r: i % num_topics for i, r in enumerate(REGIONS)}
    sigma = 0.8
    lengths = rng.lognormal(np.log(mean_interactions) - sigma**2 / 2, sigma, num_users)
    lengths = np.clip(np.round(lengths), 5, num_items // 2).astype(int)

    rows_i, rows_t, rows_r = [], [], []
    for u in range(num_users):
        prefs = _preferences(rng, num_topics, region_topic[attrs.at[u, "region"]])
        seq = _sequence(rng, prefs, lengths[u], item_topic, popularity)
        gaps = np.floor(rng.exponential(7200.0, len(seq)) / 600) * 600  # 10-minute ticks: some ties
        start = _START + int(rng.integers(0, 365 * 86400))
        rows_i.append(seq)
        rows_t.append(start + np.cumsum(gaps).astype(np.int64))
        affinity = np.sqrt(prefs[item_topic[seq]] / prefs.max())
        rows_r.append(np.clip(np.round(1 + 4 * affinity + rng.normal(0, 0.7, len(seq))), 1, 5))

    return InteractionData(
        name="synthetic",
        item_ids=[f"i{i:05d}" for i in range(num_items)],
        item_text=item_text,
        user_ids=[f"u{u:05d}" for u in range(num_users)],
        sequences=[s.astype(np.int64) for s in rows_i],
        timestamps=rows_t,
        ratings=[r.astype(np.float32) for r in rows_r],
        user_attributes=attrs,
        stats={
            "interactions": int(lengths.sum()),
            "users": num_users,
            "items": num_items,
            "seed": seed,
            "item_topic": item_topic.tolist(),
            "topic_names": names,
        },
    )


def _preferences(rng: np.random.Generator, num_topics: int, favourite: int) -> np.ndarray:
    """Dirichlet mass concentrated on 1–3 topics, the first often the region's favourite."""
    k = min(num_topics, int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])))
    chosen = list(rng.choice(num_topics, k, replace=False))
    if rng.random() < 0.4 and favourite not in chosen:
        chosen[0] = favourite
    alpha = np.full(num_topics, 0.05)
    alpha[chosen] = 2.0
    return rng.dirichlet(alpha) + 1e-9


def _sequence(rng, prefs, length, item_topic, popularity, stick: float = 0.8, explore: float = 0.15) -> np.ndarray:
    """A Markov walk over topics (stay with probability ``stick``), items by popularity.

    With probability ``explore`` a step ignores taste and picks any popular item, as real
    users do (gifts, trends); without it a topic oracle would be unrealistically strong.
    """
    topic_items = [np.flatnonzero(item_topic == t) for t in range(len(prefs))]
    available = np.ones(len(popularity), dtype=bool)
    left = np.array([len(m) for m in topic_items])
    topic = rng.choice(len(prefs), p=prefs)
    out = []
    for _ in range(length):
        if rng.random() < explore:
            members = np.arange(len(popularity))
        else:
            if rng.random() >= stick or left[topic] == 0:
                p = prefs * (left > 0)
                topic = rng.choice(len(prefs), p=p / p.sum())
            members = topic_items[topic]
        w = popularity[members] * available[members]
        item = members[np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right")]
        available[item] = False
        left[item_topic[item]] -= 1
        out.append(item)
    return np.array(out, dtype=np.int64)


def _item_text(rng: np.random.Generator, names: list[str], topic: int) -> str:
    """A made-up title and one-sentence description, mostly in the topic's vocabulary.

    One item in seven borrows a word from another topic, so topic is clear from the text
    as a whole but not from any single word.
    """
    words = list(rng.choice(TOPICS[names[topic]], 5, replace=False))
    if len(names) > 1 and rng.random() < 1 / 7:
        other = names[(topic + 1 + rng.integers(len(names) - 1)) % len(names)]
        words[4] = str(rng.choice(TOPICS[other]))
    f1, f2 = rng.choice(FILLER, 2, replace=False)
    a, b, c, d, e = words
    titles = [
        f"The {a.title()} {b.title()}",
        f"{a.title()} and {b.title()}",
        f"{f1.title()} {a.title()}",
        f"A {f1.title()} {b.title()} {f2.title()}",
    ]
    title = titles[int(rng.integers(len(titles)))]
    article = "An" if f2[0] in "aeiou" else "A"
    return f"{title}. {article} {f2} {f1} about {c}, {d} and {e}."
