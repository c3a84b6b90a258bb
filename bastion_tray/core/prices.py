"""The shipped price table `cost` estimates with: on-demand Linux USD per hour, by region and
instance type, plus the public IPv4 charge.

Only the small types a bastion runs on, in a few regions; anything else is reported in hours
with no USD and a reason. The table is data, not a live price: `scripts/update_prices.py`
rewrites the block between the markers below from the AWS Price List API (README: "What the
bastion costs"), and TABLE_DATE says when that last happened.
"""

from __future__ import annotations

from dataclasses import dataclass

#: AWS's charge for every public IPv4 address, in use or not (since February 2024): an
#: auto-assigned public IP while the instance runs, an Elastic IP at all times
IPV4_PER_HOUR = 0.005

# --- the table (scripts/update_prices.py rewrites from here to the end marker) ---
TABLE_DATE = "2026-12-03"
TABLE_SOURCE = "AWS EC2 on-demand pricing, Linux, shared tenancy"
PRICES: dict[str, dict[str, float]] = {
    "ap-northeast-1": {
        "t2.nano": 0.0076, "t2.micro": 0.0152, "t2.small": 0.0304, "t2.medium": 0.0608,
        "t3.nano": 0.0068, "t3.micro": 0.0136, "t3.small": 0.0272, "t3.medium": 0.0544,
        "t3a.nano": 0.0061, "t3a.micro": 0.0122, "t3a.small": 0.0245, "t3a.medium": 0.049,
        "t4g.nano": 0.0054, "t4g.micro": 0.0108, "t4g.small": 0.0216, "t4g.medium": 0.0432,
        "m5.large": 0.124,
    },
    "ap-southeast-1": {
        "t2.nano": 0.0073, "t2.micro": 0.0146, "t2.small": 0.0292, "t2.medium": 0.0584,
        "t3.nano": 0.0066, "t3.micro": 0.0132, "t3.small": 0.0264, "t3.medium": 0.0528,
        "t3a.nano": 0.0059, "t3a.micro": 0.0118, "t3a.small": 0.0236, "t3a.medium": 0.0472,
        "t4g.nano": 0.0053, "t4g.micro": 0.0106, "t4g.small": 0.0212, "t4g.medium": 0.0424,
        "m5.large": 0.12,
    },
    "eu-central-1": {
        "t2.nano": 0.0067, "t2.micro": 0.0134, "t2.small": 0.0268, "t2.medium": 0.0536,
        "t3.nano": 0.006, "t3.micro": 0.012, "t3.small": 0.024, "t3.medium": 0.048,
        "t3a.nano": 0.0054, "t3a.micro": 0.0108, "t3a.small": 0.0216, "t3a.medium": 0.0432,
        "t4g.nano": 0.0048, "t4g.micro": 0.0096, "t4g.small": 0.0192, "t4g.medium": 0.0384,
        "m5.large": 0.115,
    },
    "eu-west-1": {
        "t2.nano": 0.0063, "t2.micro": 0.0126, "t2.small": 0.025, "t2.medium": 0.05,
        "t3.nano": 0.0057, "t3.micro": 0.0114, "t3.small": 0.0228, "t3.medium": 0.0456,
        "t3a.nano": 0.0051, "t3a.micro": 0.0102, "t3a.small": 0.0204, "t3a.medium": 0.0408,
        "t4g.nano": 0.0046, "t4g.micro": 0.0092, "t4g.small": 0.0184, "t4g.medium": 0.0368,
        "m5.large": 0.107,
    },
    "us-east-1": {
        "t2.nano": 0.0058, "t2.micro": 0.0116, "t2.small": 0.023, "t2.medium": 0.0464,
        "t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416,
        "t3a.nano": 0.0047, "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376,
        "t4g.nano": 0.0042, "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336,
        "m5.large": 0.096,
    },
    "us-west-2": {
        "t2.nano": 0.0058, "t2.micro": 0.0116, "t2.small": 0.023, "t2.medium": 0.0464,
        "t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416,
        "t3a.nano": 0.0047, "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376,
        "t4g.nano": 0.0042, "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336,
        "m5.large": 0.096,
    },
}
# --- end of the table ---


@dataclass(frozen=True)
class Price:
    """The hourly price of one instance type in one region, or why there is none."""

    per_hour: float | None
    reason: str | None = None  # set when per_hour is None


def instance_price(instance_type: str | None, region: str) -> Price:
    """The shipped table's USD per hour for `instance_type` in `region`."""
    if not instance_type:
        return Price(None, "the instance type is not known yet (no describe has answered)")
    per_hour = PRICES.get(region, {}).get(instance_type)
    if per_hour is None:
        return Price(None, f"no price for {instance_type} in {region} in the shipped table "
                           f"(of {TABLE_DATE}); see README: What the bastion costs")
    return Price(per_hour)
