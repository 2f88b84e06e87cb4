"""Reviewed defects of the simulators' configuration, each reproduced before it was fixed."""

from __future__ import annotations

import pytest

from channels.config import ChannelsConfigError, config_from_dict


def test_an_issuer_whose_balance_range_is_upside_down_is_refused() -> None:
    # The SWIFT debtors' range is checked; an issuer's was silently collapsed to its minimum.
    cfg = {"networks": [{"name": "card", "kind": "card", "scheme": "p"}],
           "card_schemes": [{"name": "p", "issuers": [
               {"name": "a", "bins": ["41"], "balance_min": 5000, "balance_max": 100}]}]}
    with pytest.raises(ChannelsConfigError, match=r"issuers\[0\].*balance_max"):
        config_from_dict(cfg)
    cfg["card_schemes"][0]["issuers"][0]["balance_max"] = 5000  # type: ignore[index]
    config_from_dict(cfg)
