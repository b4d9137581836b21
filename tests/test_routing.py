"""The app's URL rules build their URLs on demand (hypermachine.api.routing)."""

from __future__ import annotations

from hypermachine.api import Services, create_app
from hypermachine.api.routing import LazyBuilderRule


async def test_every_rule_builds_its_url_when_asked(services: Services) -> None:
    app = create_app(services)
    rules = list(app.url_map.iter_rules())
    assert rules and all(isinstance(rule, LazyBuilderRule) for rule in rules)
    urls = app.url_map.bind("localhost")
    assert urls.build("get_vm", {"vm_id": "vm-1"}) == "/api/v1/vms/vm-1"
    assert urls.build("list_vms", {"state": "running"}) == "/api/v1/vms?state=running"
