"""Coupons are part of the core: their tables, the offer kind that issues them (``offer``), their codes
(``codes``) and redemption with every check (``redemption``). The ``coupon`` channel that puts a coupon in the
member's wallet is an ordinary plugin (``orchestrator_plugins.wallet``)."""
