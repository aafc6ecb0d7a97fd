"""Small files in the Amazon Reviews 2023 layouts (and the McAuley 2018 one), written as the real ones are:
Python's json.dumps (non-ASCII as \\uXXXX, emoji as surrogate pairs), keys in the official order, HTML left in
review texts, free-form nested `details`, `images` and `videos` lists of objects (whose objects have a `title`
of their own)."""
import gzip
import json
import random

REVIEW_HEADLINES = ["Five Stars", "Great product", "Love it! \U0001F60D", "Not worth it", "Works great &#34;as is&#34;"]


def review_rows(n: int, seed: int = 0) -> list[dict]:
    """`raw/review_categories/<Category>.jsonl` rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        asin = f"B0{rng.randrange(36**8):08X}"
        smiley = rng.choice(["\U0001F44D", "\u2764\ufe0f", ":)"])
        text = (f"Review {i}: this cr\u00e8me is &#34;great&#34;.<br /><br />Would buy again {smiley} "
                + "long " * rng.choice([1, 5, 400]))
        rows.append({
            "rating": float(rng.randint(1, 5)), "title": rng.choice(REVIEW_HEADLINES) + ("" if i % 3 else f" {i}"),
            "text": text,
            "images": [] if i % 4 else [{"small_image_url": f"https://m.media-amazon.com/images/I/{i}._SL256_.jpg",
                                         "medium_image_url": f"https://m.media-amazon.com/images/I/{i}._SL800_.jpg",
                                         "large_image_url": f"https://m.media-amazon.com/images/I/{i}._SL1600_.jpg",
                                         "attachment_type": "IMAGE"}],
            "asin": asin, "parent_asin": asin, "user_id": f"AGKHLEW2SOWHNMFQIJGBECAF7{i:03d}",
            "timestamp": 1588687728923 + i, "helpful_vote": i % 3, "verified_purchase": bool(i % 2),
        })
    return rows


def meta_rows(n: int, seed: int = 0) -> list[dict]:
    """`raw/meta_categories/meta_<Category>.jsonl` rows: `title` is the product's title (the demo's column)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        details = {"Brand": f"Brand{i % 7}", "Item Weight": f"{i} ounces"} if i % 2 else \
            {"Package Dimensions": "5 x 3 x 1 inches", "Manufacturer": {"name": "Acme", "country": "US"}}
        rows.append({
            "main_category": "All Beauty",
            "title": f"Howard LC0008 Leather Conditioner {i}, 8-Ounce (4-Pack) &amp; caf\u00e9",
            "average_rating": 4.8, "rating_number": 10 + i,
            "features": [f"Restores leather {i}", "", "Made in USA \U0001F1FA\U0001F1F8"] if i % 3 else [],
            "description": [f"Our conditioner {i} is the best.<br />Really."] if i % 2 else [],
            "price": None if i % 5 == 0 else 9.99 + i,
            "images": [{"thumb": "https://m.media-amazon.com/images/I/1.jpg", "variant": "MAIN"}],
            "videos": [{"title": "Howard Leather Conditioner demo", "url": "https://www.amazon.com/vdp/1",
                        "user_id": ""}] if i % 4 == 0 else [],
            "store": "Howard Products", "categories": [] if i % 2 else ["Beauty", "Skin Care"],
            "details": details, "parent_asin": f"B01CUPMQZ{i % 10}", "bought_together": None,
        })
        if rng.random() < 0.1:
            rows[-1]["subtitle"] = "Paperback"
    return rows


def review_2018_rows(n: int) -> list[dict]:
    """McAuley 2018 review rows (`reviewText`, `summary`, `overall`, a `style` dict, an `image` list)."""
    return [{"overall": 5.0, "verified": True, "reviewTime": "09 4, 2015", "reviewerID": f"A{i:08d}",
             "asin": "0143026860", "style": {"Format:": " Paperback"}, "reviewerName": "Jo",
             "reviewText": f"Great book number {i} &amp; more", "summary": f"Five Stars {i % 4}",
             "unixReviewTime": 1441324800, **({"image": ["https://images-na.ssl-images-amazon.com/1.jpg"]}
                                               if i % 5 == 0 else {})} for i in range(n)]


def write_jsonl(path: str, rows: list[dict], extra_lines: dict[int, bytes] | None = None) -> None:
    """Rows as JSON Lines (gzipped when the name ends in .gz); `extra_lines` puts raw lines at 0-based positions."""
    lines = [json.dumps(row).encode() for row in rows]
    for position, line in sorted((extra_lines or {}).items()):
        lines.insert(position, line)
    data = b"\n".join(lines) + b"\n"
    with (gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")) as f:
        f.write(data)
