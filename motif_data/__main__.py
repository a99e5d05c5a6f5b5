import sys

from motif_data.cli import main

sys.exit(main())
