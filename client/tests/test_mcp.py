"""The MCP server (moltstreet_client/mcp.py) driven over stdio by the official SDK's client, against a live server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from moltstreet_client.mcp import TOOLS

from testsupport.e2e import create_market, daphne_servers, register_agent

pytestmark = pytest.mark.django_db(transaction=True)


def _stdio(url: str, api_key: str | None) -> StdioServerParameters:
    env = {"MOLTSTREET_URL": url}
    if api_key:
        env["MOLTSTREET_API_KEY"] = api_key
    return StdioServerParameters(
        command=sys.executable, args=["-m", "moltstreet_client.mcp"], env=env, cwd=str(Path(__file__).parent)
    )


def _payload(result) -> object:
    """A tool result's JSON: the structured content when there is one, else the text."""
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content) if isinstance(content, dict) and len(content) == 1 else content
    return json.loads(result.content[0].text)


def _error(result) -> dict:
    """The exchange's error object from an error result ("Error executing tool <name>: {...}")."""
    assert result.is_error, result
    text = result.content[0].text
    return json.loads(text[text.index("{") :])["error"]


async def _session(url: str, api_key: str | None, script):
    async with Client(_stdio(url, api_key), read_timeout_seconds=30) as client:
        return await script(client)


def test_an_mcp_client_lists_the_tools_and_trades_through_them():
    with daphne_servers(1) as [server]:
        alice = register_agent(server.url, "mcp-alice")
        bob = register_agent(server.url, "mcp-bob")
        market_id = create_market(server.url, bob["api_key"], "Will the MCP tools trade?")["id"]

        async def script(client):
            listed = await client.list_tools()
            tools = {tool.name: tool for tool in listed.tools}
            assert tuple(tools) == TOOLS
            for tool in tools.values():  # every tool documents its units or its errors
                assert "Errors" in tool.description or "credits" in tool.description, tool.name
            place = tools["place_order"].input_schema["properties"]
            assert set(place["side"]["enum"]) == {"YES", "NO"} and set(place["action"]["enum"]) == {"BUY", "SELL"}

            markets = _payload(await client.call_tool("list_markets", {"search": "MCP"}))
            assert [m["id"] for m in markets] == [market_id]
            found = _payload(await client.call_tool("search_markets", {"query": "tools trade"}))
            assert [m["question"] for m in found] == ["Will the MCP tools trade?"]

            placed = _payload(
                await client.call_tool(
                    "place_order",
                    {"market_id": market_id, "side": "YES", "action": "BUY", "price": "0.40", "size": 10},
                )
            )
            order = placed["order"]
            assert (order["status"], order["price"], order["size"]) == ("open", "0.40", 10)
            assert order["client_order_id"], "the SDK always sends a client_order_id"

            detail = _payload(await client.call_tool("get_market", {"market_id": market_id}))
            assert detail["market"]["question"] == "Will the MCP tools trade?"
            assert detail["orderbook"]["yes"] == [{"price": "0.40", "size": 10}]

            account = _payload(await client.call_tool("get_account", {}))
            assert account["agent"]["name"] == "mcp-alice"
            assert account["agent"]["locked_balance"] == "4.00"

            resting = _payload(await client.call_tool("list_orders", {"market_id": market_id}))
            assert [o["id"] for o in resting] == [order["id"]]

            # The exchange's own error codes come back as error results.
            broke = await client.call_tool(
                "place_order",
                {"market_id": market_id, "side": "YES", "action": "BUY", "price": "0.99", "size": 100000},
            )
            assert _error(broke)["code"] == "insufficient_balance"
            missing = await client.call_tool("get_market", {"market_id": "00000000-0000-0000-0000-000000000000"})
            assert _error(missing)["code"] == "not_found"

            cancelled = _payload(await client.call_tool("cancel_order", {"order_id": order["id"]}))
            assert cancelled["status"] == "cancelled"
            again = await client.call_tool("cancel_order", {"order_id": order["id"]})
            assert _error(again)["code"] == "order_not_cancellable"

            board = _payload(await client.call_tool("get_leaderboard", {"ordering": "name", "limit": 5}))
            assert {"mcp-alice", "mcp-bob"} <= {a["name"] for a in board}

        asyncio.run(_session(server.url, alice["api_key"], script))

        async def anonymous(client):
            assert _payload(await client.call_tool("list_markets", {}))  # reading needs no key
            refused = await client.call_tool("get_account", {})
            assert _error(refused)["code"] == "not_authenticated"

        asyncio.run(_session(server.url, None, anonymous))


def test_the_mcp_tools_batch_preview_amend_cancel_and_beat():
    with daphne_servers(1) as [server]:
        alice = register_agent(server.url, "mcp-carol")
        bob = register_agent(server.url, "mcp-dave")
        market_id = create_market(server.url, bob["api_key"], "Will the MCP batch tools work?")["id"]

        async def script(client):
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            schema = tools["place_orders"].input_schema
            assert schema["properties"]["orders"]["type"] == "array"

            order = {"market_id": market_id, "side": "YES", "action": "BUY", "price": "0.40", "size": 10}
            preview = _payload(await client.call_tool("preview_order", order))
            assert (preview["status"], preview["error"], preview["fills"]) == (201, None, [])
            assert preview["reserve"] == {"credits": "4.00", "contracts": 0}
            assert preview["order"]["id"] is None and preview["locked_balance"] == "4.00"

            placed = _payload(
                await client.call_tool(
                    "place_orders",
                    {
                        "orders": [
                            order,
                            {**order, "price": "0.99", "size": 100000},
                            {**order, "side": "NO", "price": "0.30", "size": 2, "client_order_id": "mcp-no"},
                        ]
                    },
                )
            )["orders"]
            assert [entry["status"] for entry in placed] == [201, 400, 201]
            assert placed[1]["error"]["code"] == "insufficient_balance" and placed[1]["order"] is None
            assert placed[0]["order"]["client_order_id"] and placed[2]["order"]["client_order_id"] == "mcp-no"
            yes_id, no_id = placed[0]["order"]["id"], placed[2]["order"]["id"]

            amended = _payload(await client.call_tool("amend_order", {"order_id": yes_id, "price": "0.45"}))
            assert amended["replaced"]["id"] == yes_id and amended["replaced"]["replaced_by"] == amended["order"]["id"]
            in_place = _payload(await client.call_tool("amend_order", {"order_id": no_id, "size": 1}))
            assert (in_place["order"]["id"], in_place["order"]["size"], in_place["replaced"]) == (no_id, 1, None)
            refused = await client.call_tool("amend_order", {"order_id": yes_id, "size": 3})
            assert _error(refused)["code"] == "order_not_amendable"

            cancelled = _payload(
                await client.call_tool("cancel_orders", {"order_ids": [amended["order"]["id"], no_id, yes_id]})
            )["orders"]
            assert [entry["status"] for entry in cancelled] == [200, 200, 409]
            assert cancelled[2]["error"]["code"] == "order_not_cancellable"

            beat = _payload(await client.call_tool("heartbeat", {"timeout_seconds": 60}))
            assert (beat["armed"], beat["timeout_seconds"], beat["cancelled"]) == (True, 60, 0) and beat["deadline"]
            assert _payload(await client.call_tool("heartbeat", {"timeout_seconds": 0}))["armed"] is False
            wrong = await client.call_tool("heartbeat", {"timeout_seconds": 2})
            assert _error(wrong)["code"] == "invalid_request"

        asyncio.run(_session(server.url, alice["api_key"], script))
