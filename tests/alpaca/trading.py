"""TradingClient places a market and a limit order, replaces and cancels the limit order,
and reads orders, account, positions, assets and the clock; TradingStream receives the
matching trade updates as TradeUpdate models. Wrong keys, an unknown symbol, a duplicate
client_order_id and insufficient buying power each raise alpaca-py's APIError."""

import threading
import uuid

from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Clock, Order, Position, TradeAccount, TradeUpdate
from alpaca.trading.requests import (
    GetOrdersRequest, LimitOrderRequest, MarketOrderRequest, ReplaceOrderRequest,
)
from alpaca.trading.stream import TradingStream

from common import HTTP, KEY, SECRET, WS, capture_logs, check, run_in_thread, wait_for

client = TradingClient(KEY, SECRET, url_override=HTTP)

account = client.get_account()
check(isinstance(account, TradeAccount), f"account is {type(account)}")
check(account.status == "ACTIVE" and account.currency == "USD", f"account: {account}")
starting_cash = float(account.cash)
check(starting_cash > 0, f"cash {account.cash}")
check(client.get_all_positions() == [], "no positions yet")

updates = []
lock = threading.Lock()


async def on_update(update):
    with lock:
        updates.append(update)


def events_of(order_id):
    with lock:
        return [u.event for u in updates if str(u.order.id) == str(order_id)]


stream = TradingStream(KEY, SECRET, url_override=WS + "/stream")
stream.subscribe_trade_updates(on_update)
run_in_thread(stream)

# The stream listens once alpaca-py has authenticated; until its first update arrives, probe
# with a far-away limit order that is canceled at once.
probes = []


def probe():
    order = client.submit_order(LimitOrderRequest(
        symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=1.00))
    client.cancel_order_by_id(order.id)
    probes.append(order.id)


probe()
wait_for(lambda: any("new" in events_of(p) for p in probes), "the stream to listen",
         step=lambda: len(probes) < 50 and probe())

# A market order fills at once against the simulated book.
market = client.submit_order(MarketOrderRequest(
    symbol="AAPL", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
check(isinstance(market, Order), f"market order is {type(market)}")
check(market.symbol == "AAPL" and market.qty == "5" and market.extended_hours is False,
      f"market order: {market}")
wait_for(lambda: "fill" in events_of(market.id), "the market order's fill")
with lock:
    fill = next(u for u in updates if str(u.order.id) == str(market.id) and u.event == "fill")
check(isinstance(fill, TradeUpdate), f"update is {type(fill)}")
check(fill.qty == 5 and fill.position_qty == 5 and fill.price > 0, f"fill: {fill}")
check(fill.execution_id is not None, "a fill has an execution id")
check(fill.order.status == OrderStatus.FILLED and fill.order.filled_qty == "5",
      f"filled order: {fill.order}")
check(client.get_order_by_id(market.id).status == OrderStatus.FILLED, "GET order by id")

positions = client.get_all_positions()
check(len(positions) == 1 and isinstance(positions[0], Position), f"positions: {positions}")
check(positions[0].symbol == "AAPL" and positions[0].qty == "5"
      and positions[0].side == "long", f"position: {positions[0]}")
check(client.get_open_position("AAPL").qty == "5", "GET position by symbol")

# A limit order far below the market rests; it is replaced, then canceled.
client_id = "limit-" + uuid.uuid4().hex[:8]
limit = client.submit_order(LimitOrderRequest(
    symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
    limit_price=50.00, client_order_id=client_id))
check(limit.status == OrderStatus.NEW and limit.limit_price == "50", f"limit: {limit}")
check(str(client.get_order_by_client_id(client_id).id) == str(limit.id),
      "GET order by client_order_id")

# A second order with the same client_order_id is refused, as Alpaca does.
try:
    client.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=49.00, client_order_id=client_id))
    raise AssertionError("a duplicate client_order_id was accepted")
except APIError as error:
    check(error.status_code == 422 and error.code == 40010001, f"duplicate: {error}")
    check("client_order_id must be unique" in error.message, f"duplicate message: {error.message}")

replaced = client.replace_order_by_id(limit.id, ReplaceOrderRequest(qty=3, limit_price=51.00))
check(replaced.replaces is not None and str(replaced.replaces) == str(limit.id),
      f"replacement: {replaced}")
check(replaced.qty == "3" and replaced.limit_price == "51", f"replacement terms: {replaced}")
check(client.get_order_by_id(limit.id).status == OrderStatus.REPLACED, "old order replaced")

client.cancel_order_by_id(replaced.id)
wait_for(lambda: "canceled" in events_of(replaced.id), "the cancel's trade update")
check(events_of(limit.id) == ["new", "replaced"], f"old order updates: {events_of(limit.id)}")
check(events_of(replaced.id) == ["new", "canceled"],
      f"new order updates: {events_of(replaced.id)}")
check(client.get_order_by_id(replaced.id).status == OrderStatus.CANCELED, "canceled")

# Canceling again: the order is no longer cancelable.
try:
    client.cancel_order_by_id(replaced.id)
    raise AssertionError("a canceled order was canceled again")
except APIError as error:
    check(error.status_code == 422, f"cancel twice: {error}")

every = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
ids = {str(o.id) for o in every}
check({str(market.id), str(limit.id), str(replaced.id)} <= ids, "all orders listed")
check(client.get_orders() == [], "no open orders left")

# Cancel-all answers one status per open order.
open_order = client.submit_order(LimitOrderRequest(
    symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
    limit_price=1.00))
statuses = client.cancel_orders()
check([(str(s.id), s.status) for s in statuses] == [(str(open_order.id), 200)],
      f"cancel all: {statuses}")

# Insufficient buying power.
try:
    client.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=100000, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        limit_price=150.00))
    raise AssertionError("an unaffordable order was accepted")
except APIError as error:
    check(error.status_code == 403 and error.code == 40310000, f"buying power: {error}")
    check("buying power" in error.message, f"buying power message: {error.message}")

# An unknown symbol.
try:
    client.submit_order(MarketOrderRequest(
        symbol="ZZZZ", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    raise AssertionError("an order for an unknown symbol was accepted")
except APIError as error:
    check(error.status_code == 422 and error.code == 40010001, f"unknown symbol: {error}")
try:
    client.get_asset("ZZZZ")
    raise AssertionError("an unknown asset was found")
except APIError as error:
    check(error.status_code == 404 and error.code == 40410000, f"unknown asset: {error}")

assets = client.get_all_assets()
check("AAPL" in {a.symbol for a in assets}, "AAPL is an asset")
check(client.get_asset("AAPL").tradable, "AAPL is tradable")
clock = client.get_clock()
check(isinstance(clock, Clock) and clock.next_open is not None, f"clock: {clock}")

account = client.get_account()
check(float(account.cash) < starting_cash, "cash went down by the purchase")
check(float(account.long_market_value) > 0, "the position is marked")

stream.stop()

# A wrong secret: REST raises 401, the trading stream refuses to authorize.
try:
    TradingClient(KEY, "wrong-secret", url_override=HTTP).get_account()
    raise AssertionError("a wrong secret was accepted")
except APIError as error:
    check(error.status_code == 401 and error.code == 40110000, f"wrong secret: {error}")
logs = capture_logs("alpaca.trading.stream")
bad = TradingStream(KEY, "wrong-secret", url_override=WS + "/stream")
bad.subscribe_trade_updates(on_update)
run_in_thread(bad)
wait_for(lambda: logs.saw("failed to authenticate"), "the stream's auth failure")
bad.stop()
print("trading: ok")
