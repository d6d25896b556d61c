"""Campaign results: what each run earned, measured against its held-out control group.

``attribution`` finds, in SQL, which paid orders each run earned and which members of each run converted within
their window; ``stats`` holds the intervals; ``report`` aggregates the ledger, coupons, redemptions and orders into
the report document every time it is asked (nothing is counted as it happens, so nothing drifts). The formulas
are in docs/domain.md, "Results".
"""
