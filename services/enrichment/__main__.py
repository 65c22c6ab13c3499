from services.enrichment.worker import main

main()
