"""The stock demo: the tools the demo chat offers (`stocks`: `get_stock_price`, `buy_stock`; `watchlist`)
and the market they and the dev servers share (`prices`: tickers and prices; `order_details`: what an
approval of an order says). The dev checkout API and the offline model import `prices` and
`order_details`, never a tool's module.
"""
