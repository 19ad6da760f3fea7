"""The web gallery: press Index, click an image, see the most similar ones.

One more client of search_service (through AsyncImageSearchClient): it never touches a
store or a model itself. `imagesearch web --root DIR` or `python -m imagesearch_client.web`.
"""

from imagesearch_client.web.app import WebApp
from imagesearch_client.web.config import WebSettings
from imagesearch_client.web.gallery import create_app

__all__ = ["WebApp", "WebSettings", "create_app"]
