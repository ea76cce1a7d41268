"""Creates a SCRAM-SHA-512 user on a Kafka broker through the admin API.

Usage: kafka_scram_user.py BROKERS USER PASSWORD
"""
import sys

from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

brokers, user, password = sys.argv[1:4]
admin = AdminClient({"bootstrap.servers": brokers})
upsert = UserScramCredentialUpsertion(
    user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
)
for _, future in admin.alter_user_scram_credentials([upsert], request_timeout=20).items():
    future.result()
print(f"created SCRAM-SHA-512 user {user}")
