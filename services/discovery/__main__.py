from services.discovery.worker import main

main()
