"""The policy as code: resident insurance enrollment (城乡居民基本医疗保险), Hefei and Anhui rules.

Imports only the standard library, msgspec and ``eventsourcing.domain``: no infrastructure.
The modules follow the policy (``docs/policy.md``; § numbers are its rule families):

- ``refusals``: the reasons a fact is refused (the contract's vocabulary);
- ``identity``: resident ID numbers (GB 11643) and the keyed person key (§2);
- ``policy``: policy tables per region and funding year, loaded from files (§1, §3–5);
- ``source``: what every event carries (message, actor, effective time, policy version);
- ``coverage``: when coverage and benefits start, waiting periods (§3–4);
- ``person``: the insured person: enrollments, payments, subsidies, status changes (§2–6);
- ``cash``: cash receipts and remittances of community committees (§3);
- ``targets``: enrollment targets per district and year (§7);
- ``coverage_question``: "is this person covered on this date?", also as of a past moment.
"""
