"""The app's pure view helpers: layouts, overlays, thumbnails and edits the pages draw.

Kept apart from the loop (`hitl/`) so each room has one job: nothing here imports
streamlit; pages call these functions and draw what they return.
"""
