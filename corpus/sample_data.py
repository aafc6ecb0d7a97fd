"""Write the bundled SYNTHETIC sample: baby-product reviews in the Amazon Customer Reviews TSV format.

The 2021 demo read the `amazon_us_reviews` hub dataset, which no longer exists. This generator
(seeded, deterministic, byte for byte) imitates its format and its quirks so the pipeline can be
run and tested anywhere: many reviews per product (titles repeat), HTML entities, stray
whitespace, quotes that are not CSV quoting, a few malformed rows and a few bad UTF-8 bytes.
Every brand, product and review in it is invented.

    python -m corpus.sample_data --output corpus/sample/amazon_reviews_us_sample.tsv.gz
"""
import argparse
import gzip
import random
from datetime import date, timedelta

HEADER = (
    "marketplace customer_id review_id product_id product_parent product_title product_category star_rating "
    "helpful_votes total_votes vine verified_purchase review_headline review_body review_date"
).split()
SAMPLE_PATH = "corpus/sample/amazon_reviews_us_sample.tsv.gz"

BRANDS = [
    "Little Sprout", "Nestling", "BabyCove", "Tiny Tots", "Moonbeam", "Snugglebug", "Cuddle Co.", "Bloom &amp; Bee",
    "Peapod", "Honeybear", "Kinder Nest", "Pebble &amp; Pine", "Wee Wonders", "Starlit Baby", "Bumble Baby",
    "Sunny Cub", "Petit Bébé", "Happy Hatch", "Lullaby Lane", "Owlet &amp; Oak", "NapTime", "Giggle Garden",
]
PRODUCTS = {
    "Bottle": ["Anti-Colic", "Wide Neck", "Glass", "BPA-Free", "Slow Flow", "Natural Feel"],
    "Pacifier": ["Orthodontic", "Silicone", "Glow in the Dark", "Newborn", "One-Piece"],
    "Swaddle Blanket": ["Muslin", "Organic Cotton", "Bamboo", "Adjustable", "Breathable"],
    "Crib Sheet": ["Fitted", "Jersey Knit", "Organic Cotton", "Waterproof", "Flannel"],
    "Teether": ["Silicone", "Wooden", "Freezer Safe", "Banana", "Textured"],
    "Sippy Cup": ["Spill-Proof", "Transition", "Insulated", "Soft Spout", "Straw"],
    "Bib": ["Waterproof", "Silicone", "Bandana Drool", "Long Sleeve", "Easy Clean"],
    "Burp Cloth": ["Muslin", "Terry", "Extra Absorbent", "Contoured", "Organic"],
    "Diaper Bag": ["Backpack", "Waterproof", "Large Capacity", "Travel", "Unisex"],
    "Changing Pad": ["Contoured", "Portable", "Waterproof", "Foldable", "Cushioned"],
    "Baby Monitor": ["Video", "Audio", "Wi-Fi", "Night Vision", "Long Range"],
    "Car Seat Cover": ["Stretchy", "Nursing", "Winter", "Breathable", "Multi-Use"],
    "Stroller Organizer": ["Universal", "Insulated", "Deep Cup Holder", "Detachable"],
    "Bath Tub": ["Foldable", "Infant to Toddler", "Non-Slip", "Collapsible"],
    "Hooded Towel": ["Bamboo", "Animal", "Ultra Soft", "Organic Cotton"],
    "Washcloths": ["Muslin", "Bamboo", "Soft", "Reusable"],
    "Sleep Sack": ["Wearable Blanket", "Cotton", "Fleece", "Lightweight", "Zipper"],
    "Play Mat": ["Activity Gym", "Foam", "Reversible", "Non-Toxic", "Waterproof"],
    "Rattle": ["Wooden", "Soft", "Wrist", "Musical", "Sensory"],
    "Plush Doll": ["Soft", "Organic", "Lovey", "Musical", "Handmade"],
    "Nursing Pillow": ["Original", "Adjustable", "Organic", "Support"],
    "Bottle Brush": ["Silicone", "Long Handle", "Rotating", "Sponge"],
    "Drying Rack": ["Countertop", "Compact", "Foldable", "Grass"],
    "Baby Gate": ["Pressure Mounted", "Extra Wide", "Walk-Through", "Auto-Close"],
    "Outlet Covers": ["Child Proof", "Clear", "Self-Closing"],
    "High Chair": ["Convertible", "Foldable", "Adjustable", "Wooden"],
    "Baby Carrier": ["Ergonomic", "Wrap", "Hip Seat", "Mesh", "Newborn"],
    "Bouncer": ["Vibrating", "Portable", "Rocking", "Lightweight"],
    "Night Light": ["Projector", "Rechargeable", "Dimmable", "Plug-In"],
    "Sound Machine": ["White Noise", "Portable", "Rechargeable", "Lullaby"],
    "Spoon Set": ["Silicone", "Soft-Tip", "Self-Feeding", "Heat Sensing"],
    "Snack Container": ["Spill-Proof", "Collapsible", "Stackable"],
    "Training Pants": ["Cotton", "Padded", "Waterproof", "Potty"],
    "Diaper Cream": ["Zinc Oxide", "Natural", "Fragrance-Free", "Soothing"],
}
# Most products are "Baby"; the rest carry the category a real shop would file them under, so the
# sample also serves as a labelled table (title -> category) for the downstream probe.
CATEGORIES = {
    "Toys": ["Teether", "Rattle", "Plush Doll", "Play Mat", "Bouncer"],
    "Health & Personal Care": ["Diaper Cream", "Baby Monitor", "Bottle Brush", "Nursing Pillow"],
    "Apparel": ["Bib", "Sleep Sack", "Training Pants", "Hooded Towel"],
    "Home": ["Night Light", "Sound Machine", "Drying Rack", "Baby Gate", "Outlet Covers", "High Chair"],
}
CATEGORY_OF = {product: category for category, products in CATEGORIES.items() for product in products}
EXTRAS = [
    "for Newborns", "for Boys and Girls", "0-6 Months", "6-12 Months", "Baby Shower Gift", "Unisex",
    "Pack of 3", "4 Count", "Set of 6", "Pink", "Blue", "Gray", "Mint", "Elephant", "Fox", "Stars",
    "9 oz", "5 oz", "(Pack of 2)", "Toddler Size", "Newborn Essentials", "Easy to Clean", "Travel Size",
]
QUIRKS = [
    lambda t: t.replace(" ", "  ", 1),  # stray double space
    lambda t: t + " ",  # trailing whitespace
    lambda t: " " + t,
    lambda t: t + ', 12" Tall',  # inch mark, not a CSV quote
    lambda t: '"Best Gift" ' + t,  # leading quote, not a CSV quote
    lambda t: t + ", &#34;Sleepy Bear&#34;",
    lambda t: t + " - Mommy &amp; Me",
    lambda t: t.upper(),
    lambda t: t + "™",
    lambda t: t + " &amp;amp; More",  # escaped twice, as in real dumps
]
HEADLINES = [
    ("Five Stars", 5), ("Love it!", 5), ("Works great", 5), ("Perfect for our little one", 5), ("Great value", 4),
    ("Good but pricey", 4), ("Does the job", 3), ("Just OK", 3), ("Not as described", 2), ("Broke after a week", 1),
    ("Disappointed", 1), ("My baby loves it", 5), ("Would buy again", 5), ("Cute but small", 3),
]
PHRASES = [
    "We bought this for our {age} and it has been great.", "The {product} is {adj} and easy to clean.",
    "Arrived quickly and well packaged.", "My wife said it was the best {product} we tried.",
    "It is a bit smaller than I expected.", "Would recommend to any new parent.",
    "After a month of daily use it still looks new.", "The color was different from the picture.",
    "Our pediatrician recommended this {product}.", "I wish it came in more colors.",
    "It's \"fine\" - nothing special.", "Great gift for a baby shower.", "Stopped working after two weeks.",
]
AGES = ["newborn", "3 month old", "6 month old", "toddler", "granddaughter", "twins", "son", "daughter"]


def _title(rng: random.Random) -> tuple[str, str]:
    product = rng.choice(list(PRODUCTS))
    words = [rng.choice(BRANDS), rng.choice(PRODUCTS[product]), product]
    if rng.random() < 0.3:
        words.insert(2, rng.choice(PRODUCTS[product]))
    title = " ".join(dict.fromkeys(words))
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        title += rng.choice([", ", " - ", " "]) + rng.choice(EXTRAS)
    if rng.random() < 0.15:
        title = rng.choice(QUIRKS)(title)
    return title, CATEGORY_OF.get(product, "Baby")


def _body(rng: random.Random, title: str) -> str:
    product = title.split(",")[0].split(" - ")[0].strip().split(" ")[-1].lower()
    parts = [
        rng.choice(PHRASES).format(age=rng.choice(AGES), product=product, adj=rng.choice(["soft", "sturdy", "cute"]))
        for _ in range(rng.randint(1, 4))
    ]
    return rng.choice([" ", "<br />", "<br /><br />", "  "]).join(parts)


def sample_rows(n_products: int = 3000, seed: int = 1234) -> list[bytes]:
    """The sample's lines (header first), as bytes: some are deliberately malformed."""
    rng = random.Random(seed)
    titles: list[tuple[str, str]] = []
    for _ in range(n_products):
        # Variants of one product (sizes, colours) often share a title under another product id.
        titles.append(rng.choice(titles) if titles and rng.random() < 0.05 else _title(rng))
    lines = ["\t".join(HEADER).encode()]
    start = date(2005, 1, 1)
    for title, category in titles:
        product_id = f"B{rng.randrange(10**8, 10**9):09d}"
        parent = str(rng.randrange(10**8, 10**9))
        n_reviews = min(60, int(rng.paretovariate(1.3)))  # long tail: most products get a few reviews
        for _ in range(n_reviews):
            headline, stars = rng.choice(HEADLINES)
            total = rng.choice([0, 0, 0, 1, 2, 5, 12])
            row = [
                "US", str(rng.randrange(10**7, 10**8)), f"R{rng.randrange(36**12):012X}"[:14], product_id, parent,
                title, category, str(stars), str(rng.randint(0, total)), str(total),
                "Y" if rng.random() < 0.02 else "N", "Y" if rng.random() < 0.85 else "N",
                headline, _body(rng, title), (start + timedelta(days=rng.randrange(3800))).isoformat(),
            ]
            line = "\t".join(row).encode("utf-8")
            r = rng.random()
            if r < 0.002:
                line = line.rsplit(b"\t", 3)[0]  # truncated row: too few fields
            elif r < 0.004:
                line = line.replace(b"<br />", b"\t", 1) if b"<br />" in line else line + b"\tEXTRA"
            elif r < 0.005:
                line = line.replace(title.encode("utf-8"), title.encode("utf-8") + b" B\xe9b\xe9", 1)  # latin-1 bytes
            lines.append(line)
    return lines


def write_sample_reviews(path: str = SAMPLE_PATH, n_products: int = 3000, seed: int = 1234) -> None:
    """Write the sample as a gzipped TSV (mtime 0, so the bytes are reproducible)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(b"\n".join(sample_rows(n_products, seed)) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=SAMPLE_PATH, help="where to write the .tsv.gz (default: %(default)s)")
    parser.add_argument("--products", type=int, default=3000, help="number of products (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default: %(default)s)")
    args = parser.parse_args()
    write_sample_reviews(args.output, args.products, args.seed)


if __name__ == "__main__":
    main()
