import sys

from .cli import main

sys.exit(main(["lab", *sys.argv[1:]]))
