"""How many virtual sites a simulation's ClientApp process keeps open: ECGFL_SITE_CACHE, read
when the ClientApp loads; 0 reopens the site for every message (the benchmark's "before")."""

import pytest

from client import node
from common.config import ConfigError


def test_the_number_of_sites_kept_open_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(node.SITE_CACHE_ENV, raising=False)
    assert node.site_cache_size() == node.DEFAULT_SITE_CACHE == 32
    assert node._virtual_site.cache_parameters()["maxsize"] == 32
    monkeypatch.setenv(node.SITE_CACHE_ENV, "0")
    assert node.site_cache_size() == 0
    for bad in ("-1", "many", ""):
        monkeypatch.setenv(node.SITE_CACHE_ENV, bad)
        with pytest.raises(ConfigError, match="ECGFL_SITE_CACHE"):
            node.site_cache_size()
