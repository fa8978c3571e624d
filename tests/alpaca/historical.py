"""StockHistoricalDataClient reads bars (with pagination) and the latest trade and quote;
an unknown symbol and a wrong key raise APIError."""

import datetime as dt

from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import (
    StockBarsRequest, StockLatestQuoteRequest, StockLatestTradeRequest,
)
from alpaca.data.timeframe import TimeFrame

from common import HTTP, KEY, SECRET, check, iso, publish

start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)).replace(
    second=0, microsecond=0)
publish([
    {"T": "b", "S": "AAPL", "o": 100 + i, "h": 101 + i, "l": 99 + i, "c": 100.5 + i,
     "v": 1000 + i, "n": 10 + i, "vw": 100.25 + i, "t": iso(start + dt.timedelta(minutes=i))}
    for i in range(5)
])
now = dt.datetime.now(dt.timezone.utc)
publish([
    {"T": "t", "S": "MSFT", "i": 7, "x": "V", "p": 410.5, "s": 20, "t": iso(now), "c": []},
    {"T": "q", "S": "MSFT", "bp": 410.4, "bs": 2, "bx": "V", "ap": 410.6, "as": 3,
     "ax": "V", "t": iso(now)},
])

client = StockHistoricalDataClient(KEY, SECRET, url_override=HTTP)
bars = client.get_stock_bars(StockBarsRequest(
    symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute, start=start, limit=5))
aapl = bars.data["AAPL"]
check([b.open for b in aapl] == [100, 101, 102, 103, 104], f"bars: {aapl}")
check(aapl[0].timestamp == start, f"first bar time {aapl[0].timestamp} != {start}")
check(aapl[2].trade_count == 12 and aapl[2].vwap == 102.25, f"bar fields: {aapl[2]}")
df = bars.df
check(len(df) == 5, f"the DataFrame has the bars: {df}")

# A time range: start inclusive, end exclusive.
paged = client.get_stock_bars(StockBarsRequest(
    symbol_or_symbols=["AAPL"], timeframe=TimeFrame.Minute, start=start,
    end=start + dt.timedelta(minutes=3)))
check([b.open for b in paged.data["AAPL"]] == [100, 101, 102], f"range: {paged}")

trade = client.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="MSFT"))
check(trade["MSFT"].price == 410.5 and trade["MSFT"].size == 20, f"latest trade: {trade}")
quote = client.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=["MSFT"]))
check(quote["MSFT"].bid_price == 410.4 and quote["MSFT"].ask_size == 3,
      f"latest quote: {quote}")

try:
    client.get_stock_bars(StockBarsRequest(symbol_or_symbols="ZZZZ", timeframe=TimeFrame.Minute))
    raise AssertionError("bars of an unknown symbol were served")
except APIError as error:
    check(error.status_code == 400 and error.code == 40010002, f"unknown symbol: {error}")

try:
    StockHistoricalDataClient(KEY, "wrong", url_override=HTTP).get_stock_latest_trade(
        StockLatestTradeRequest(symbol_or_symbols="MSFT"))
    raise AssertionError("a wrong secret was accepted")
except APIError as error:
    check(error.status_code == 401, f"wrong secret: {error}")
print("historical: ok")
