"""chatspot-studio: click-to-ask in the browser (docs/studio.md).

An aiohttp server and a static page. With ROS, its own rclpy node talks to the agent only through
the agent's public interfaces (``ros_bridge``); without ROS, the same page runs over the in-process
pipeline (``local``). ``protocol`` (what the page may send, checked field by field) and ``hub``
(latest-frame-wins delivery, rate limits, counters) know nothing of either.
"""
