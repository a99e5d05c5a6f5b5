import sys

from motif_data.cli import main

if __name__ == "__main__":
    sys.exit(main())
