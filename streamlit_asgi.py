"""ArtMiner HITL app served as an ASGI app: ``streamlit_app.py`` behind one middleware.

``artminer app`` runs ``streamlit run streamlit_asgi.py``; Streamlit finds the ``st.App``
below and serves ``streamlit_app.py`` through uvicorn, with `hitl.page_urls.AppRootScript`
in front so that a page's URL opened directly (``/map``) causes no 404s
(streamlit/streamlit#7074). ``streamlit run streamlit_app.py`` still works, with those 404s.
"""

from __future__ import annotations

import streamlit as st
from starlette.middleware import Middleware

from hitl.page_urls import AppRootScript

app = st.App("streamlit_app.py", middleware=[
    Middleware(AppRootScript, base_path=lambda: st.get_option("server.baseUrlPath"))])
