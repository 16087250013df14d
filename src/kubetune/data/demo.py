"""The demo ledger: realistic, noisy ledger lines labelled with an account code, made from a seed.

The embedded default needs data nobody has to bring. The ledger is built to be learnable but not
trivially so, like real accounts-payable lines:

- 45 account codes in 10 families (IT, premises, travel, ...) with skewed sizes (a Zipf-like law:
  the largest code has ~100 times the rows of the smallest).
- Suppliers sell under several codes (an office retailer sells stationery, furniture and
  refreshments; a few marketplace suppliers sell almost anything), so the supplier alone does not
  decide the code.
- Descriptions are specific to the code, or only to its family (ambiguous between its codes), or
  generic ("Invoice 48213"); words get typos and abbreviations; reference numbers are everywhere.
- Amount, department and payment method depend on the code, and each carries part of the signal.

A TF-IDF + logistic-regression baseline (word and character n-grams) gets about 82% of a random
20% test split right with 6,000 rows and 86-89% with 20,000 (chance: 23%), so a fine-tuned model has
room above it and cannot reach 100%.

`demo://ledger?rows=N&seed=S` as `data.uri` generates it in memory; `kubetune demo-data OUT` writes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from kubetune.errors import DataError

DEMO_SCHEME = "demo://"
DEFAULT_ROWS = 20_000
DEFAULT_SEED = 0
LABEL_COLUMN = "account_code"
COLUMNS = ("line_id", "payment_date", "supplier", "description", "department", "amount", "payment_method", LABEL_COLUMN)


@dataclass(frozen=True)
class Account:
    code: str
    family: str
    words: tuple[str, ...]  # phrases that point at this code
    amount: float  # median amount in pounds
    department: str
    direct_debit: bool = False  # regular bills paid by direct debit


# Phrases shared by a family's codes: a description made of these is ambiguous within the family.
FAMILY_WORDS: dict[str, tuple[str, ...]] = {
    "it": ("IT equipment", "technology", "computer services", "digital"),
    "premises": ("premises", "building", "site services", "facilities"),
    "travel": ("travel", "business trip", "expenses claim", "journey"),
    "people": ("staff costs", "HR services", "employee", "workforce"),
    "professional": ("professional services", "advisory", "fees", "engagement"),
    "office": ("office supplies", "office", "order", "consumables"),
    "marketing": ("marketing", "campaign", "brand", "promotion"),
    "fleet": ("vehicle", "fleet", "van", "transport"),
    "finance": ("charges", "finance", "annual", "membership"),
    "utilities": ("utilities", "energy", "supply", "meter"),
}

ACCOUNTS: tuple[Account, ...] = (
    Account("6100-IT-HARDWARE", "it", ("laptop", "monitor", "docking station", "keyboard and mouse", "server"), 900, "IT"),
    Account("6110-SOFTWARE", "it", ("software licence", "annual subscription", "licence renewal", "user seats"), 2500, "IT"),
    Account("6120-CLOUD", "it", ("cloud hosting", "compute usage", "storage usage", "hosting"), 1800, "IT", True),
    Account("6130-IT-SUPPORT", "it", ("helpdesk support", "managed service", "support callout", "network support"), 1200, "IT"),
    Account("6140-TELECOMS", "it", ("mobile contract", "broadband", "phone lines", "data SIMs"), 450, "IT", True),
    Account("6200-RENT", "premises", ("rent", "quarterly rent", "lease payment", "service charge"), 12000, "Facilities", True),
    Account("6210-RATES", "premises", ("business rates", "rates instalment", "council rates"), 3500, "Facilities", True),
    Account("6240-CLEANING", "premises", ("cleaning", "window cleaning", "deep clean", "hygiene services"), 700, "Facilities"),
    Account("6250-REPAIRS", "premises", ("repairs", "maintenance", "plumbing repair", "roof repair", "boiler service"), 850, "Facilities"),
    Account("6260-SECURITY", "premises", ("security guard", "alarm monitoring", "CCTV maintenance", "key holding"), 1100, "Facilities"),
    Account("6270-WASTE", "premises", ("waste collection", "recycling", "skip hire", "confidential shredding"), 300, "Facilities"),
    Account("6300-TRAVEL", "travel", ("rail tickets", "train fare", "flights", "air fare"), 220, "Operations"),
    Account("6310-HOTELS", "travel", ("hotel", "accommodation", "overnight stay", "room booking"), 160, "Operations"),
    Account("6320-TAXIS", "travel", ("taxi", "mileage claim", "car hire", "minicab"), 45, "Operations"),
    Account("6330-SUBSISTENCE", "travel", ("meals", "subsistence", "lunch", "dinner"), 35, "Operations"),
    Account("6400-AGENCY", "people", ("agency staff", "temporary staff", "contractor timesheet", "interim cover"), 2200, "HR"),
    Account("6410-TRAINING", "people", ("training course", "workshop", "e-learning", "certification exam"), 600, "HR"),
    Account("6420-RECRUITMENT", "people", ("job advert", "recruitment fee", "placement fee", "candidate search"), 1500, "HR"),
    Account("6430-WELFARE", "people", ("eye tests", "occupational health", "wellbeing", "staff flu jabs"), 250, "HR"),
    Account("6500-LEGAL", "professional", ("legal advice", "solicitor", "contract review", "counsel opinion"), 3000, "Legal"),
    Account("6510-AUDIT", "professional", ("audit fee", "accountancy", "tax advice", "year end accounts"), 4500, "Finance"),
    Account("6520-CONSULTANCY", "professional", ("consultancy", "project review", "strategy work", "consultant days"), 5000, "Executive"),
    Account("6530-INSURANCE", "professional", ("insurance premium", "public liability", "fleet insurance", "cyber cover"), 3800, "Finance", True),
    Account("6600-STATIONERY", "office", ("stationery", "pens", "copier paper", "envelopes", "toner"), 85, "Operations"),
    Account("6610-POSTAGE", "office", ("postage", "courier", "franking", "parcel delivery", "special delivery"), 60, "Operations"),
    Account("6620-PRINTING", "office", ("printing", "business cards", "leaflets", "print run"), 400, "Marketing"),
    Account("6630-FURNITURE", "office", ("desk", "office chairs", "filing cabinet", "furniture"), 650, "Facilities"),
    Account("6640-CATERING", "office", ("catering", "refreshments", "milk and tea", "sandwich platter", "water cooler"), 120, "Operations"),
    Account("6700-ADVERTISING", "marketing", ("advertising", "social media ads", "radio advert", "online ads"), 1600, "Marketing"),
    Account("6710-EVENTS", "marketing", ("exhibition stand", "event tickets", "conference", "sponsorship"), 1900, "Marketing"),
    Account("6720-DESIGN", "marketing", ("design work", "artwork", "website design", "photography"), 950, "Marketing"),
    Account("6730-RESEARCH", "marketing", ("market research", "survey", "focus group", "research panel"), 2800, "Marketing"),
    Account("6800-FUEL", "fleet", ("fuel", "diesel", "fuel card", "unleaded"), 140, "Logistics"),
    Account("6810-VEHICLE-REPAIRS", "fleet", ("vehicle repair", "MOT", "tyres", "van service"), 380, "Logistics"),
    Account("6820-VEHICLE-LEASE", "fleet", ("vehicle lease", "contract hire", "lease rental", "van lease"), 520, "Logistics", True),
    Account("6830-PARKING", "fleet", ("parking", "congestion charge", "toll", "parking permit"), 25, "Logistics"),
    Account("6900-BANK-CHARGES", "finance", ("bank charges", "card fees", "transaction fees", "account fee"), 75, "Finance", True),
    Account("6910-MEMBERSHIPS", "finance", ("membership", "professional body", "trade association", "institute fees"), 420, "Finance"),
    Account("6920-PERMITS", "finance", ("licence fee", "permit", "registration fee", "inspection fee"), 260, "Legal"),
    Account("6930-DONATIONS", "finance", ("donation", "charity", "sponsored event", "community fund"), 300, "Executive"),
    Account("6940-EQUIPMENT-HIRE", "finance", ("equipment hire", "plant hire", "tool hire", "generator hire"), 480, "Operations"),
    Account("6950-ELECTRICITY", "utilities", ("electricity", "power", "kWh usage", "standing charge"), 1400, "Facilities", True),
    Account("6960-GAS", "utilities", ("gas", "gas supply", "heating fuel", "gas standing charge"), 900, "Facilities", True),
    Account("6970-WATER", "utilities", ("water", "water rates", "sewerage", "water supply"), 350, "Facilities", True),
    Account("6980-SUBSCRIPTIONS", "finance", ("journal subscription", "newspaper", "data service", "research database"), 320, "Executive"),
)

DEPARTMENTS = ("Finance", "IT", "Facilities", "HR", "Operations", "Marketing", "Legal", "Logistics", "Executive", "Sales")
ABBREVIATIONS = {
    "maintenance": "maint", "services": "svcs", "service": "svc", "subscription": "subs", "licence": "lic",
    "equipment": "equip", "quarterly": "qtrly", "building": "bldg", "accommodation": "accom", "management": "mgmt",
    "insurance": "ins", "annual": "ann", "professional": "prof", "contract": "cont", "delivery": "del",
    "recruitment": "recruit", "advertising": "advtg", "consultancy": "consult", "vehicle": "veh", "training": "trg",
}
GENERIC_DESCRIPTIONS = ("Invoice", "Inv", "Payment", "Monthly charge", "Order", "Account", "Statement", "Balance due", "Ref")
NAME_PARTS = (
    "Apex", "Northgate", "Bluebell", "Harbour", "Kestrel", "Meridian", "Oakfield", "Pennine", "Quayside", "Redwood",
    "Summit", "Thistle", "Valley", "Wessex", "Yardley", "Beacon", "Castle", "Dunmore", "Elmstead", "Foxley",
    "Granite", "Heather", "Ironbridge", "Juniper", "Lakeside", "Millbrook", "Norfolk", "Orchard", "Parkway", "Riverside",
)
NAME_TRADES = {
    "it": ("Digital", "Tech", "Systems", "Networks", "Computing"),
    "premises": ("Property", "Facilities", "Estates", "Maintenance", "Building"),
    "travel": ("Travel", "Cars", "Hotels", "Rail", "Journeys"),
    "people": ("Recruitment", "People", "Training", "Staffing", "Health"),
    "professional": ("Partners", "Advisory", "Associates", "Consulting", "Chambers"),
    "office": ("Office", "Supplies", "Print", "Interiors", "Catering"),
    "marketing": ("Media", "Creative", "Events", "Design", "Insight"),
    "fleet": ("Motors", "Fleet", "Fuels", "Garage", "Leasing"),
    "finance": ("Bank", "Institute", "Trust", "Hire", "Services"),
    "utilities": ("Energy", "Power", "Water", "Gas", "Utilities"),
}
SUFFIXES = ("Ltd", "Ltd", "Limited", "PLC", "LLP", "& Co", "Group", "UK Ltd")
MARKETPLACES = ("Brightmart Business", "Everyday Direct", "Corporate Card Merchant", "Linkway Marketplace")
PAYMENT_METHODS = ("BACS", "Direct Debit", "Purchase Card", "Cheque", "CHAPS")
# Share of descriptions that name the code itself, only its family, or nothing at all.
SPECIFIC, FAMILY_ONLY = 0.45, 0.25


def generate_ledger(rows: int, seed: int) -> pd.DataFrame:
    """`rows` demo ledger lines, identical for the same (rows, seed); columns as in `COLUMNS`."""
    if rows < 1:
        raise DataError(f"the demo ledger needs at least 1 row (got rows={rows})")
    rng = np.random.default_rng(seed)
    accounts = ACCOUNTS
    # Zipf-like sizes: rank r gets weight 1/r, ranks shuffled so the big codes differ by seed.
    ranks = rng.permutation(len(accounts)) + 1
    weights = 1.0 / ranks**1.0
    code_index = rng.choice(len(accounts), size=rows, p=weights / weights.sum())

    own_suppliers, shared_suppliers = _suppliers(rng)
    lines = [_line(rng, accounts[k], own_suppliers[accounts[k].code], shared_suppliers) for k in code_index]
    frame = pd.DataFrame(lines, columns=[c for c in COLUMNS if c != "line_id"])
    frame.insert(0, "line_id", [f"L{seed % 1000:03d}{i:07d}" for i in range(rows)])
    return frame


def _suppliers(rng: np.random.Generator) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each code's own suppliers, and per family the suppliers that sell under several of its codes."""
    used: set[str] = set()

    def new_name(family: str) -> str:
        while True:
            name = f"{rng.choice(NAME_PARTS)} {rng.choice(NAME_TRADES[family])} {rng.choice(SUFFIXES)}"
            if name not in used:
                used.add(name)
                return name

    own = {a.code: [new_name(a.family) for _ in range(int(rng.integers(2, 7)))] for a in ACCOUNTS}
    # Like real ledgers, a supplier of one code often bills a neighbouring code too.
    for account in ACCOUNTS:
        neighbours = [a.code for a in ACCOUNTS if a.family == account.family and a.code != account.code]
        if neighbours and rng.random() < 0.6:
            lender = own[str(rng.choice(neighbours))]
            own[account.code].append(lender[int(rng.integers(0, len(lender)))])
    shared = {family: [new_name(family) for _ in range(3)] for family in FAMILY_WORDS}
    return own, shared


def _line(rng: np.random.Generator, account: Account, own: list[str], shared: dict[str, list[str]]) -> list[object]:
    draw = rng.random()
    if draw < 0.15:
        supplier = str(rng.choice(MARKETPLACES))
    elif draw < 0.50:
        supplier = str(rng.choice(shared[account.family]))
    else:
        supplier = str(rng.choice(own))

    kind = rng.random()
    if kind < SPECIFIC:
        phrase = str(rng.choice(account.words))
        if rng.random() < 0.3:
            phrase = f"{rng.choice(FAMILY_WORDS[account.family])} {phrase}"
    elif kind < SPECIFIC + FAMILY_ONLY:
        phrase = str(rng.choice(FAMILY_WORDS[account.family]))
    else:
        phrase = str(rng.choice(GENERIC_DESCRIPTIONS))
    description = _noisy(rng, phrase)

    department = account.department if rng.random() < 0.65 else str(rng.choice(DEPARTMENTS))
    amount = round(float(account.amount * rng.lognormal(0.0, 0.7)), 2)
    if account.direct_debit and rng.random() < 0.5:
        amount = float(round(amount, -1))  # fixed monthly bills are round sums
    method = _payment_method(rng, account, amount)
    day = dt.date(2023, 1, 1) + dt.timedelta(days=int(rng.integers(0, 730)))
    return [day.isoformat(), supplier, description, department, amount, method, account.code]


def _noisy(rng: np.random.Generator, phrase: str) -> str:
    words = []
    for word in phrase.split():
        lower = word.lower()
        if lower in ABBREVIATIONS and rng.random() < 0.35:
            word = ABBREVIATIONS[lower]
        elif len(word) > 4 and rng.random() < 0.12:
            word = _typo(rng, word)
        words.append(word)
    text = " ".join(words)
    style = rng.random()
    if style < 0.2:
        text = text.upper()
    elif style < 0.3:
        text = text.lower()
    reference = rng.random()
    if reference < 0.35:
        text = f"{text} {rng.choice(['INV', 'Inv', 'inv#', 'PO', 'REF'])}{rng.choice(['-', ' ', ''])}{rng.integers(1000, 99999)}"
    elif reference < 0.5:
        text = f"{rng.choice(['Q1', 'Q2', 'Q3', 'Q4', 'Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun'])} {text}"
    return text


def _typo(rng: np.random.Generator, word: str) -> str:
    i = int(rng.integers(1, len(word) - 1))
    kind = rng.integers(0, 3)
    if kind == 0:  # swapped neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # dropped letter
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # doubled letter


def _payment_method(rng: np.random.Generator, account: Account, amount: float) -> str:
    if account.direct_debit and rng.random() < 0.7:
        return "Direct Debit"
    if amount < 150 and rng.random() < 0.75:
        return "Purchase Card"
    if amount > 10_000 and rng.random() < 0.5:
        return "CHAPS"
    return "Cheque" if rng.random() < 0.04 else "BACS"


# ------------------------------------------------------------------------------------ demo:// URIs
def is_demo_uri(uri: str) -> bool:
    return uri.startswith(DEMO_SCHEME)


def parse_demo_uri(uri: str, key: str = "data.uri") -> tuple[int, int]:
    """`demo://ledger?rows=N&seed=S` → (rows, seed); both optional."""
    parts = urlsplit(uri)
    if parts.netloc != "ledger" or parts.path not in ("", "/"):
        raise DataError(f"{key}: unknown demo data {uri!r}; the built-in one is demo://ledger?rows=20000&seed=0")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"rows", "seed"})
    if unknown:
        raise DataError(f"{key}: unknown parameter(s) {', '.join(unknown)} in {uri!r}; demo://ledger takes rows and seed")
    values = {"rows": DEFAULT_ROWS, "seed": DEFAULT_SEED}
    for name, raw in query.items():
        try:
            values[name] = int(raw[-1])
        except ValueError:
            raise DataError(f"{key}: {name}={raw[-1]!r} in {uri!r} is not a whole number") from None
    if values["rows"] < 1:
        raise DataError(f"{key}: rows must be at least 1 in {uri!r}")
    return values["rows"], values["seed"]


def load_demo(uri: str, key: str = "data.uri") -> pd.DataFrame:
    rows, seed = parse_demo_uri(uri, key)
    return generate_ledger(rows, seed)


def write_demo_data(path: str | Path, rows: int, seed: int) -> Path:
    """Write the demo ledger to a local file; the format follows the name (.csv, .csv.gz, .parquet, .jsonl).

    Written under a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path).expanduser()
    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".parquet", ".jsonl")):  # before the rows are generated
        raise DataError(f"cannot tell the format of {path.name!r} from its name; end it in .csv, .csv.gz, .parquet or .jsonl")
    frame = generate_ledger(rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if name.endswith((".csv", ".csv.gz")):
        frame.to_csv(partial, index=False, compression="gzip" if name.endswith(".gz") else None)
    elif name.endswith(".parquet"):
        frame.to_parquet(partial, index=False)
    else:
        frame.to_json(partial, orient="records", lines=True, force_ascii=False)
    partial.replace(path)
    return path
