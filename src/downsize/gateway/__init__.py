"""The OpenAI-compatible gateway: `downsize.gateway.app.create_app`, `downsize.gateway.server.serve`.

Nothing is imported here, so importing the package stays free of aiohttp, Starlette and uvicorn.
"""
