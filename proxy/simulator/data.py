"""The simulator's seed data: fictional carriers, products and producers, fresh for each app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

# (id, name, NAIC code, domicile state, AM Best rating)
_CARRIERS = (
    (1, "Prairie Mutual Life Insurance Company", "60231", "NE", "A+"),
    (2, "Harborview Life and Annuity Company", "61418", "MA", "A"),
    (3, "Great Lakes Casualty Insurance Company", "24572", "MI", "A-"),
    (4, "Cascade Health Plans, Inc.", "95310", "WA", "A"),
    (5, "Magnolia State Fire & Marine Insurance Co.", "21687", "MS", "B++"),
    (6, "Keystone Fidelity Life Insurance Company", "67245", "PA", "A+"),
    (7, "Sierra Vista Property & Casualty Company", "38294", "CA", "A-"),
    (8, "Lone Star Heritage Insurance Company", "70112", "TX", "A"),
    (9, "Blue Ridge Mutual Insurance Company", "14836", "VA", "A"),
    (10, "Granite Shield Assurance Company", "29941", "NH", "A-"),
    (11, "Sunbelt Dental and Vision, Inc.", "52630", "FL", "B+"),
    (12, "Northstar Benefit Life Insurance Company", "65977", "MN", "A+"),
)

# (id, carrier id, name, product type, states where it is sold)
_PRODUCTS = (
    (101, 1, "Prairie Term 20", "TERM_LIFE", ("NE", "IA", "KS", "MO")),
    (102, 1, "Prairie Guaranteed Universal Life", "UNIVERSAL_LIFE", ("NE", "IA", "KS")),
    (103, 1, "Prairie Final Expense", "WHOLE_LIFE", ("NE", "IA", "KS", "MO", "SD")),
    (104, 2, "Harborview Fixed Indexed Annuity 7", "ANNUITY", ("MA", "CT", "RI", "NH")),
    (105, 2, "Harborview Income Bridge SPIA", "ANNUITY", ("MA", "CT", "NY")),
    (106, 3, "Great Lakes Commercial Auto", "COMMERCIAL_AUTO", ("MI", "OH", "IN", "WI")),
    (107, 3, "Great Lakes Business Owners Policy", "COMMERCIAL_PROPERTY", ("MI", "OH")),
    (108, 4, "Cascade Individual PPO Silver", "HEALTH", ("WA", "OR", "ID")),
    (109, 4, "Cascade Medicare Advantage HMO", "MEDICARE", ("WA", "OR")),
    (110, 4, "Cascade Short Term Medical", "HEALTH", ("WA", "ID", "MT")),
    (111, 5, "Magnolia Homeowners HO-3", "PERSONAL_PROPERTY", ("MS", "AL", "LA")),
    (112, 5, "Magnolia Flood Plus", "PERSONAL_PROPERTY", ("MS", "LA")),
    (113, 6, "Keystone Whole Life 100", "WHOLE_LIFE", ("PA", "NJ", "DE", "MD")),
    (114, 6, "Keystone Term 30", "TERM_LIFE", ("PA", "NJ", "OH", "NY")),
    (115, 7, "Sierra Vista Personal Auto", "PERSONAL_AUTO", ("CA", "NV", "AZ")),
    (116, 7, "Sierra Vista Renters", "PERSONAL_PROPERTY", ("CA", "NV")),
    (117, 8, "Lone Star Indexed Universal Life", "UNIVERSAL_LIFE", ("TX", "OK", "NM", "LA")),
    (118, 8, "Lone Star Accident Plan", "ACCIDENT_HEALTH", ("TX", "OK")),
    (119, 9, "Blue Ridge Farmowners", "COMMERCIAL_PROPERTY", ("VA", "NC", "WV")),
    (120, 9, "Blue Ridge Umbrella", "PERSONAL_PROPERTY", ("VA", "NC", "TN")),
    (121, 10, "Granite Shield Workers Compensation", "WORKERS_COMP", ("NH", "VT", "ME")),
    (122, 10, "Granite Shield General Liability", "COMMERCIAL_LIABILITY", ("NH", "VT", "MA")),
    (123, 11, "Sunbelt Dental PPO", "DENTAL", ("FL", "GA", "SC", "AL")),
    (124, 11, "Sunbelt Vision Basic", "VISION", ("FL", "GA")),
    (125, 12, "Northstar Group Term Life", "TERM_LIFE", ("MN", "WI", "ND", "SD", "IA")),
)


def _license(state: str, number: str, loas: tuple[str, ...], expires: str) -> Record:
    return {
        "state": state,
        "licenseNumber": number,
        "licenseClass": "Insurance Producer",
        "status": "ACTIVE",
        "expirationDate": expires,
        "linesOfAuthority": list(loas),
    }


def _entities() -> list[Record]:
    life_health = ("Life", "Accident & Health")
    p_and_c = ("Property", "Casualty")
    return [
        {
            "npn": "17345829",
            "entityType": "INDIVIDUAL",
            "firstName": "Maria",
            "lastName": "Delgado",
            "residentState": "TX",
            "licenses": [
                _license("TX", "2104417", life_health, "2026-08-31"),
                _license("OK", "100293841", life_health, "2026-08-31"),
            ],
        },
        {
            "npn": "8823105",
            "entityType": "INDIVIDUAL",
            "firstName": "James",
            "lastName": "Okafor",
            "residentState": "PA",
            "licenses": [
                _license("PA", "891044", life_health, "2027-01-31"),
                _license("NJ", "1735562", life_health, "2026-01-31"),
            ],
        },
        {
            "npn": "19004417",
            "entityType": "INDIVIDUAL",
            "firstName": "Emily",
            "lastName": "Nguyen",
            "residentState": "WA",
            "licenses": [_license("WA", "1008836", ("Accident & Health",), "2026-05-31")],
        },
        {
            "npn": "5512980",
            "entityType": "INDIVIDUAL",
            "firstName": "Robert",
            "lastName": "Lindqvist",
            "residentState": "MN",
            "licenses": [
                _license("MN", "40381772", life_health, "2026-10-31"),
                _license("WI", "2409913", life_health, "2026-10-31"),
                _license("IA", "9917720", ("Life",), "2027-10-31"),
            ],
        },
        {
            "npn": "20117734",
            "entityType": "FIRM",
            "name": "Coastal Risk Partners LLC",
            "fein": "59-3827741",
            "residentState": "FL",
            "licenses": [
                _license("FL", "L094482", p_and_c, "2027-03-31"),
                _license("GA", "AGENCY842201", p_and_c, "2026-03-31"),
            ],
        },
        {
            "npn": "16620051",
            "entityType": "FIRM",
            "name": "Heartland Benefits Group, Inc.",
            "fein": "47-1190235",
            "residentState": "NE",
            "licenses": [
                _license("NE", "AG100477", life_health, "2026-12-31"),
                _license("KS", "0000418832", life_health, "2026-12-31"),
            ],
        },
    ]


@dataclass
class DataSet:
    """The records one simulator instance serves; writes change only this instance's copy."""

    carriers: dict[int, Record]
    products: dict[int, Record]
    entities: dict[str, Record]  # by NPN
    next_product_id: int


def new_data_set() -> DataSet:
    carriers = {
        cid: {
            "id": cid,
            "name": name,
            "naicCode": naic,
            "domicileState": state,
            "amBestRating": rating,
            "status": "ACTIVE",
        }
        for cid, name, naic, state, rating in _CARRIERS
    }
    products = {
        pid: {
            "id": pid,
            "carrierId": cid,
            "name": name,
            "productType": kind,
            "states": list(states),
            "status": "ACTIVE",
        }
        for pid, cid, name, kind, states in _PRODUCTS
    }
    entities = {entity["npn"]: entity for entity in _entities()}
    return DataSet(carriers, products, entities, next_product_id=max(products) + 1)
