"""Deterministic, realistic sample data for the demo, the tests and the benchmarks."""

import random

from orgsync_pipeline.clerk.emulator.mutations import StateMutations
from orgsync_pipeline.clerk.emulator.state import _primary_email


class SampleData(StateMutations):
    """``seed_sample``: users, organizations and memberships drawn from a seeded generator."""

    def seed_sample(
        self, *, organizations: int = 5, users: int = 12, memberships_per_org: int = 3, seed: int = 7
    ) -> None:
        """Add deterministic, realistic sample data: each organization gets ``memberships_per_org`` distinct
        members (one ``org:admin``, the rest ``org:member``). Names, slugs, emails and roles depend only on
        ``seed``; ids too when the emulator was built with ``id_seed``; timestamps never."""
        rng = random.Random(seed)
        with self._lock:
            emails = {_primary_email(u) for u in self._users.rows.values()}
            seen: dict[tuple[str, str], int] = {}  # (first, last) -> how many so far, to number duplicates
            user_ids: list[str] = []
            for _ in range(users):
                first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
                domain = rng.choice(_EMAIL_DOMAINS)
                n = seen.get((first, last), 0)
                while True:
                    n += 1
                    email = f"{first}.{last}{n if n > 1 else ''}@{domain}".lower()
                    if email not in emails:
                        break
                seen[(first, last)] = n
                emails.add(email)
                username = f"{first[0]}{last}{n if n > 1 else ''}".lower() if rng.random() < 0.3 else None
                user_ids.append(self._add_user(first, last, email, username)["id"])
            org_ids: list[str] = []
            for _ in range(organizations):
                name = f"{rng.choice(_ORG_WORDS)} {rng.choice(_ORG_SUFFIXES)}"
                org_ids.append(self._add_organization(name, None, None, None)["id"])
            per_org = min(memberships_per_org, len(user_ids))
            for org_id in org_ids:
                for i, user_id in enumerate(rng.sample(user_ids, per_org)):
                    self._add_membership(org_id, user_id, "org:admin" if i == 0 else "org:member")


_FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Bea", "Carlos", "Chen", "Dana", "Diego", "Elena", "Emeka", "Farah", "Grace",
    "Hana", "Ivan", "Jamal", "Jane", "Kai", "Lena", "Liam", "Maya", "Mei", "Nadia", "Noah", "Olga", "Omar",
    "Priya", "Quinn", "Rosa", "Sam", "Sofia", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Abbott", "Bauer", "Costa", "Diaz", "Eriksen", "Fischer", "Garcia", "Hughes", "Ito", "Johnson", "Kim",
    "Kowalski", "Lopez", "Moreau", "Nakamura", "Novak", "Okafor", "Patel", "Quist", "Rossi", "Schmidt",
    "Silva", "Tanaka", "Umar", "Varga", "Walsh", "Xu", "Yilmaz", "Zhang",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
_ORG_WORDS = (
    "Acme", "Aurora", "Beacon", "Birch", "Cobalt", "Copper", "Delta", "Ember", "Fjord", "Granite", "Harbor",
    "Helix", "Indigo", "Juniper", "Kestrel", "Lumen", "Maple", "Meridian", "Nimbus", "Northwind", "Orchid",
    "Pioneer", "Quartz", "Redwood", "Sierra", "Summit", "Tandem", "Umbra", "Vertex", "Willow", "Zenith",
)  # fmt: skip
_ORG_SUFFIXES = (
    "Analytics", "Labs", "Health", "Logistics", "Partners", "Systems", "Studio", "Group", "Foods", "Energy",
    "Robotics", "Capital", "Media", "Works",
)  # fmt: skip
