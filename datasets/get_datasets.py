"""The Python twin of get_datasets.sh (for Windows): python datasets/get_datasets.py"""
from ece662.data.download import main

raise SystemExit(main())
