"""StockDataStream (MessagePack) receives trades, quotes, bars and statuses as its models;
subscribing to a channel tickgate lacks (updatedBars) is reported and skipped, and a wrong
secret is refused with the error alpaca-py logs."""

import datetime as dt

from alpaca.data.live import StockDataStream
from alpaca.data.models import Bar, Quote, Trade
from alpaca.data.models.trades import TradingStatus

from common import (
    KEY, SECRET, WS, capture_logs, check, iso, publish, run_in_thread, wait_for,
)

received = {"trade": [], "quote": [], "bar": [], "status": [], "updated": []}


async def on_trade(trade):
    received["trade"].append(trade)


async def on_quote(quote):
    received["quote"].append(quote)


async def on_bar(bar):
    received["bar"].append(bar)


async def on_status(status):
    received["status"].append(status)


async def on_updated_bar(bar):
    received["updated"].append(bar)


logs = capture_logs("alpaca.data.live.websocket")
stream = StockDataStream(KEY, SECRET, url_override=WS + "/v2/iex")
stream.subscribe_trades(on_trade, "AAPL")
stream.subscribe_quotes(on_quote, "AAPL")
stream.subscribe_bars(on_bar, "AAPL")
stream.subscribe_trading_statuses(on_status, "AAPL")
stream.subscribe_updated_bars(on_updated_bar, "AAPL")
thread = run_in_thread(stream)

start = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
step = {"n": 0}


def publish_round():
    """One trade, quote, bar and status per round, later each time, until all arrive."""
    n = step["n"]
    step["n"] += 1
    moment = dt.datetime.now(dt.timezone.utc)
    publish([
        {"T": "t", "S": "AAPL", "i": 1000 + n, "x": "V", "p": 187.25, "s": 300,
         "t": iso(moment), "c": ["@"]},
        {"T": "q", "S": "AAPL", "bp": 187.2, "bs": 4, "bx": "V", "ap": 187.3, "as": 6,
         "ax": "V", "t": iso(moment)},
        {"T": "b", "S": "AAPL", "o": 187.0, "h": 187.5, "l": 186.75, "c": 187.25,
         "v": 1200, "n": 9, "vw": 187.1, "t": iso(start + dt.timedelta(minutes=n))},
        {"T": "s", "S": "AAPL", "sc": "halted", "sm": "trading halt", "t": iso(moment)},
    ])


wait_for(
    lambda: all(received[k] for k in ("trade", "quote", "bar", "status")),
    "a trade, a quote, a bar and a status",
    step=lambda: step["n"] < 200 and publish_round(),
)

trade = received["trade"][0]
check(isinstance(trade, Trade), f"trade is {type(trade)}")
check(trade.symbol == "AAPL" and trade.price == 187.25 and trade.size == 300,
      f"trade fields: {trade}")
check(trade.id >= 1000 and trade.conditions == ["@"], f"trade id/conditions: {trade}")
check(trade.timestamp.tzinfo is not None, "trade timestamp is timezone-aware")
check(abs((dt.datetime.now(dt.timezone.utc) - trade.timestamp).total_seconds()) < 60,
      f"trade timestamp {trade.timestamp} is the published time")

quote = received["quote"][0]
check(isinstance(quote, Quote), f"quote is {type(quote)}")
check((quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size)
      == (187.2, 4, 187.3, 6), f"quote fields: {quote}")

bar = received["bar"][0]
check(isinstance(bar, Bar), f"bar is {type(bar)}")
check((bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count, bar.vwap)
      == (187.0, 187.5, 186.75, 187.25, 1200, 9, 187.1), f"bar fields: {bar}")
check(bar.timestamp.second == 0, f"bar starts on a minute: {bar.timestamp}")

status = received["status"][0]
check(isinstance(status, TradingStatus), f"status is {type(status)}")
check(status.status_code == "halted" and status.status_message == "trading halt",
      f"status fields: {status}")

check(not received["updated"], "updatedBars are not sent")
check(logs.saw("subscribed to trades: ['AAPL']"), f"subscription reply: {logs.messages}")
check(logs.saw("updatedBars") and logs.saw("(400)"),
      f"the unknown channel was reported as an error: {logs.messages}")
stream.stop()
thread.join(10)

# A wrong secret: alpaca-py logs the server's message and keeps retrying.
bad_logs = capture_logs("alpaca.data.live.websocket")
bad_logs.messages.clear()
bad = StockDataStream(KEY, "wrong-secret", url_override=WS + "/v2/sip")
bad.subscribe_trades(on_trade, "AAPL")
bad_thread = run_in_thread(bad)
wait_for(lambda: bad_logs.saw("auth failed"), "the auth failure in alpaca-py's log")
bad.stop()
bad_thread.join(10)
print("stock data stream: ok")
