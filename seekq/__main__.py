from seekq.cli import main

main()
