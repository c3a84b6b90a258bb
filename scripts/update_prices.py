"""Refresh the price table `bastion-tray cost` ships (bastion_tray/core/prices.py).

Asks the AWS Price List API (GetProducts, in us-east-1; needs credentials allowed
`pricing:GetProducts`, no other permission) for the on-demand Linux price of every type and
region already in the table — add a region or a type to the table by hand first to have it
fetched — and rewrites the block between the table's markers, with today's date. Review the
diff before committing it:
    .venv/bin/python scripts/update_prices.py            # rewrite core/prices.py
    .venv/bin/python scripts/update_prices.py --dry-run  # print the new block only
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bastion_tray.core import prices  # noqa: E402

TABLE = ROOT / "bastion_tray" / "core" / "prices.py"
BEGIN = "# --- the table (scripts/update_prices.py rewrites from here to the end marker) ---"
END = "# --- end of the table ---"
PER_LINE = 4  # prices per line in the rendered table


def render(table: dict[str, dict[str, float]], date: str, source: str) -> str:
    """The block between the markers (markers included), as it sits in prices.py."""
    out = [BEGIN, f'TABLE_DATE = "{date}"', f'TABLE_SOURCE = "{source}"',
           "PRICES: dict[str, dict[str, float]] = {"]
    for region in sorted(table):
        out.append(f'    "{region}": {{')
        items = [f'"{kind}": {price!r},' for kind, price in table[region].items()]
        for i in range(0, len(items), PER_LINE):
            out.append("        " + " ".join(items[i:i + PER_LINE]))
        out.append("    },")
    out += ["}", END]
    return "\n".join(out)


def rewrite(text: str, block: str) -> str:
    """`text` (prices.py) with its table block replaced by `block`."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def on_demand_usd(client: Any, instance_type: str, region: str) -> float | None:
    """The Price List API's on-demand Linux USD/h (shared tenancy, no pre-installed software,
    the "Used" capacity line); None when it lists nothing."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
               "licenseModel": "No License required"}
    reply = client.get_products(ServiceCode="AmazonEC2", MaxResults=10, Filters=[
        {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()])
    for item in reply.get("PriceList", []):
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and float(usd) > 0:
                    return float(usd)
    return None


def fetch(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    import boto3

    client = boto3.client("pricing", region_name="us-east-1")
    fresh: dict[str, dict[str, float]] = {}
    for region, kinds in table.items():
        fresh[region] = {}
        for kind, old in kinds.items():
            price = on_demand_usd(client, kind, region)
            if price is None:
                print(f"{region} {kind}: not listed; keeping {old}", file=sys.stderr)
                price = old
            elif price != old:
                print(f"{region} {kind}: {old} → {price}", file=sys.stderr)
            fresh[region][kind] = price
    return fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the block, write nothing")
    args = parser.parse_args(argv)
    block = render(fetch(prices.PRICES), datetime.date.today().isoformat(), prices.TABLE_SOURCE)
    if args.dry_run:
        print(block)
        return 0
    TABLE.write_text(rewrite(TABLE.read_text(), block))
    print(f"wrote {TABLE}; review `git diff` before committing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
