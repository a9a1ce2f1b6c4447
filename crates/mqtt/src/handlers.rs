//! What each packet does to the session and the core, and how core
//! deliveries become PUBLISH packets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use junction_core::{
    Binding, ConsumerEvent, ConsumerSpec, CoreError, Delivery, Destination, FieldTable, FieldValue,
    Permission, QueueDef, Resource, Settle, StateWrites,
};

use crate::codec::{
    self, Ack, Packet, Publish, QoS, ReasonCode, ReasonProperties, RetainHandling, SubAck,
    Subscribe, TopicName, UnsubAck, Unsubscribe,
};
use crate::connection::{Conn, End, Outgoing};
use crate::convert::{self, filter_matches, filter_to_pattern, swap_separators, unix_secs};
use crate::registry;
use crate::session::{
    Inflight, Match, NAMESPACE, Source, SubOptions, incoming_key, outgoing_key, outgoing_value,
    shared_queue_name, split_shared,
};

/// Most retained messages waiting for one connection's window; more are
/// not sent (a SUBSCRIBE with many overlapping filters cannot make the
/// broker buffer without bound).
const MAX_RETAINED_BACKLOG: usize = 65_536;

/// Output bytes after which retained QoS 0 messages wait for the next write.
const OUT_HIGH_WATER: usize = 256 * 1024;
/// Tries at making a lost consumer again before the client is
/// disconnected, and the least time between two.
const REATTACH_TRIES: u8 = 5;
const REATTACH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The store write for an outgoing record: `state` is (message id,
/// released) to keep it, None to delete it.
fn outgoing_write(client_id: &str, id: u16, state: Option<(u64, bool)>) -> StateWrites {
    let key = outgoing_key(client_id, id);
    let mut w = StateWrites::new();
    match state {
        Some((message, released)) => w.put(NAMESPACE, &key, &outgoing_value(message, released)),
        None => w.delete(NAMESPACE, &key),
    }
    w
}

fn qos_min(a: QoS, b: QoS) -> QoS {
    a.min(b)
}

impl Conn {
    pub(crate) async fn on_packet(&mut self, p: Packet) {
        match p {
            Packet::Publish(p) => Box::pin(self.on_publish(p)).await,
            Packet::PubAck(a) => self.on_puback(a.packet_id),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a.packet_id),
            Packet::PubComp(a) => self.on_pubcomp(a.packet_id),
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(s)).await,
            Packet::Unsubscribe(u) => Box::pin(self.on_unsubscribe(u)).await,
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.session.expiry == 0 && expiry > 0 {
                        // [MQTT-3.14.2-2]
                        self.fail(ReasonCode::PROTOCOL_ERROR, "session expiry raised from 0");
                        return;
                    }
                    self.session.expiry = self.ctx.settings.cap_session_expiry(expiry);
                }
                if d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
                    self.end = Some(End::Abnormal);
                } else {
                    self.will = None;
                    self.end = Some(End::Normal);
                }
            }
            Packet::Connect(_) => self.fail(ReasonCode::PROTOCOL_ERROR, "second CONNECT"),
            Packet::Auth(_) => self.fail(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            ),
            other => self.fail(
                ReasonCode::PROTOCOL_ERROR,
                &format!("{} from a client", other.packet_type().name()),
            ),
        }
    }

    /// One try at making the session's consumers again after one ended
    /// while its queue stays (the serving loop calls it when
    /// `Rare::reattach_due` comes). Tries are at least a second apart
    /// (a queue whose node keeps ending its consumer is not asked in a
    /// loop); after five failures in a row the client is disconnected
    /// (it resumes its session when it reconnects).
    pub(crate) async fn reattach(&mut self) {
        let outcome = self.attach().await;
        // Counted from the try's end: a try that waited (a leader being
        // elected) is not followed by the next at once.
        let now = tokio::time::Instant::now();
        self.rare().reattached_at = Some(now);
        match outcome {
            Ok(()) => {
                let r = self.rare();
                r.reattach_due = None;
                r.reattach_failures = 0;
            }
            Err(e) if self.rare().reattach_failures >= REATTACH_TRIES - 1 => {
                tracing::warn!(client_id = %self.session.client_id, error = %e, "mqtt consumer not made again; closing");
                self.rare().reattach_due = None;
                self.disconnect(ReasonCode::UNSPECIFIED_ERROR);
                self.end = Some(End::Abnormal);
            }
            Err(e) => {
                tracing::debug!(client_id = %self.session.client_id, error = %e, "mqtt consumer not made again yet");
                let r = self.rare();
                r.reattach_failures += 1;
                r.reattach_due = Some(now + REATTACH_EVERY);
            }
        }
    }

    /// Starts the session's consumers (own queue, shared groups).
    pub(crate) async fn attach(&mut self) -> Result<(), CoreError> {
        let has_own = self
            .session
            .subs
            .by_filter
            .keys()
            .any(|f| split_shared(f).is_none());
        if has_own {
            self.ensure_own_consumer(QoS::AtMostOnce).await?;
        }
        let shared: Vec<(String, String)> = self
            .session
            .subs
            .shared()
            .map(|(g, f, _)| (g.to_string(), f.to_string()))
            .collect();
        for (g, f) in shared {
            self.ensure_shared_consumer(&g, &f).await?;
        }
        Ok(())
    }

    /// Resends what the client has not acknowledged: PUBLISH with DUP
    /// [MQTT-4.4.0-1], PUBREL for QoS 2 messages past PUBREC.
    pub(crate) fn resend_inflight(&mut self) {
        let ids: Vec<u16> = self.session.inflight.keys().copied().collect();
        for id in ids {
            if let Some(f) = self.session.inflight.get(&id) {
                let mut p = f.publish.clone();
                p.dup = true;
                self.write_publish(p);
            }
        }
        let rels: Vec<u16> = self.session.rare().pubrel_pending.iter().copied().collect();
        for id in rels {
            self.send(Packet::PubRel(Ack::new(id)));
        }
    }

    fn queue_def(&self, name: &str, durable: bool) -> QueueDef {
        let s = &self.ctx.settings;
        let mut args = FieldTable::new();
        if s.max_queued_messages > 0 {
            args.insert("x-max-length", FieldValue::U64(s.max_queued_messages));
        }
        if s.max_queued_bytes > 0 {
            args.insert("x-max-length-bytes", FieldValue::U64(s.max_queued_bytes));
        }
        if durable && s.replicated_sessions {
            // Outside a cluster a quorum queue is a classic one.
            args.insert("x-queue-type", FieldValue::LongString("quorum".into()));
        }
        let mut def = QueueDef::new(name);
        def.durable = durable;
        def.arguments = args;
        def
    }

    /// Declares a queue, or uses it as it is when it exists with other
    /// arguments (limits changed in the configuration since).
    async fn declare(&self, def: QueueDef) -> Result<(), CoreError> {
        let vhost = &self.ctx.settings.vhost;
        let name = def.name.clone();
        match self.ctx.broker.declare_queue(vhost, def, false).await {
            Ok(_) => Ok(()),
            Err(CoreError::PreconditionFailed(_)) => self
                .ctx
                .broker
                .declare_queue(vhost, QueueDef::new(name), true)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, tag: &str) -> ConsumerSpec {
        let mut spec = ConsumerSpec::new(tag, self.guard.id());
        spec.credits
            .push(std::sync::Arc::clone(&self.session.credit));
        spec
    }

    /// Makes sure the own-queue consumer exists, and acks its deliveries
    /// if a subscription of `qos` is about to be bound (a QoS 1/2 message
    /// must not leave the queue before the client has it). The mode is
    /// chosen when the consumer starts and only ever upgraded to acked
    /// while the connection lasts: switching back could send a delivery
    /// still in the channel twice.
    async fn ensure_own_consumer(&mut self, qos: QoS) -> Result<(), CoreError> {
        let no_ack = qos == QoS::AtMostOnce && self.session.own_subscriptions_qos0();
        match &self.session.consumer {
            Some(_) if !self.session.own_no_ack || no_ack => return Ok(()),
            Some(_) => {
                // No-ack consumers leave nothing in flight: switch now.
                self.upgrade_own_consumer().await;
                return Ok(());
            }
            None => {}
        }
        let def = self.queue_def(&self.session.queue(), self.session.is_persistent());
        self.declare(def).await?;
        // The queue may be new although the session is not (an AMQP client
        // deleted it): bind every filter again (binding twice is a no-op).
        let queue = self.session.queue();
        let filters: Vec<String> = self
            .session
            .subs
            .by_filter
            .keys()
            .filter(|f| split_shared(f).is_none())
            .map(|f| f.to_string())
            .collect();
        for f in filters {
            self.bind(&queue, &f, true).await?;
        }
        self.start_own_consumer(no_ack).await
    }

    /// Registers the own-queue consumer, without acks when `no_ack`. In a
    /// cluster the queue may be another node's (a session taken over from
    /// it, or a quorum queue led there): the consumer is then made there.
    async fn start_own_consumer(&mut self, no_ack: bool) -> Result<(), CoreError> {
        let mut spec = self.spec(&self.session.client_id);
        if no_ack {
            spec = spec.no_ack();
            spec.credits.clear();
        }
        let events = self.session.events();
        let handle = self
            .ctx
            .broker
            .attach_consumer(
                &self.ctx.settings.vhost,
                &self.session.queue(),
                spec,
                events,
            )
            .await?;
        self.session.consumer = Some(handle);
        self.session.own_no_ack = no_ack;
        Ok(())
    }

    /// Replaces an ack-free own consumer by an acked one; deliveries the
    /// old one made are still recognised as the session's own.
    async fn upgrade_own_consumer(&mut self) {
        if let Some(old) = self.session.consumer.take() {
            self.session.rare_mut().retired_own = Some(old.id());
            old.cancel(true);
        }
        if let Err(e) = self.start_own_consumer(false).await {
            tracing::warn!(error = %e, "mqtt consumer not restarted");
        }
    }

    async fn ensure_shared_consumer(&mut self, group: &str, filter: &str) -> Result<(), CoreError> {
        let queue = shared_queue_name(group, filter);
        if self.session.rare().shared.contains_key(&queue) {
            return Ok(());
        }
        let def = self.queue_def(&queue, true);
        self.declare(def).await?;
        self.bind(&queue, filter, true).await?;
        let spec = self.spec(&self.session.client_id);
        let events = self.session.events();
        let handle = self
            .ctx
            .broker
            .attach_consumer(&self.ctx.settings.vhost, &queue, spec, events)
            .await?;
        self.session.rare_mut().shared.insert(queue, handle);
        Ok(())
    }

    /// Read on the filter's exchange, and topic read on the filter in its
    /// AMQP form (`a/+/#` as `a.*.#`), as RabbitMQ's MQTT plugin asks.
    async fn may_subscribe(&mut self, filter: &str) -> Result<(), junction_core::Denied> {
        let exchange = convert::exchange_for(filter);
        self.access
            .check(Permission::Read, Resource::Exchange(exchange))
            .await?;
        self.access
            .check_topic(Permission::Read, exchange, &filter_to_pattern(filter))
            .await
    }

    async fn bind(&self, queue: &str, filter: &str, bind: bool) -> Result<(), CoreError> {
        let b = Binding {
            source: convert::exchange_for(filter).to_string(),
            destination: Destination::Queue(queue.to_string()),
            routing_key: filter_to_pattern(filter),
            arguments: FieldTable::new(),
        };
        let vhost = &self.ctx.settings.vhost;
        if bind {
            self.ctx.broker.bind(vhost, b, None).await
        } else {
            self.ctx.broker.unbind(vhost, &b, None).await
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) {
        let sub_id = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        let mut retained_for = Vec::new();
        for sub in s.subscriptions {
            let filter = sub.filter.as_str().to_string();
            let o = sub.options;
            let opts = SubOptions {
                qos: o.qos,
                no_local: o.no_local,
                retain_as_published: o.retain_as_published,
                retain_handling: o.retain_handling,
                id: sub_id,
            };
            let shared = match sub.filter.shared() {
                Ok(s) => s.map(|s| (s.group.to_string(), s.filter.to_string())),
                Err(_) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let levels = shared.as_ref().map_or(filter.as_str(), |(_, f)| f.as_str());
            // `$queue/q` is a queue to publish to; nothing is published
            // to it as a topic, so a subscription could never match.
            if levels.starts_with(convert::QUEUE_PREFIX)
                || convert::topic_levels(levels) > self.ctx.broker.limits().max_topic_levels
            {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if self.session.subs.by_filter.len() >= self.ctx.settings.max_subscriptions_per_session
                && !self.session.subs.by_filter.contains_key(filter.as_str())
            {
                reasons.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            if self.may_subscribe(levels).await.is_err() {
                // This filter only; the others and the connection stay.
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            let result = match &shared {
                Some((g, f)) => self.ensure_shared_consumer(g, f).await,
                None => match self.ensure_own_consumer(opts.qos).await {
                    Ok(()) => {
                        let q = self.session.queue();
                        self.bind(&q, &filter, true).await
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, %filter, "mqtt subscribe failed");
                reasons.push(match e {
                    CoreError::LimitReached(_) => ReasonCode::QUOTA_EXCEEDED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                });
                continue;
            }
            let existed = self.session.subscribe(&filter, opts.clone());
            self.session.filter_changed(&filter);
            if !existed {
                self.ctx.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            reasons.push(ReasonCode(opts.qos as u8));
            let send_retained = shared.is_none()
                && match opts.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_for.push((filter, opts));
            }
        }
        if self.session.is_persistent() {
            self.save_session().await;
        }
        let reasons = if self.version.is_v5() {
            reasons
        } else {
            reasons
                .into_iter()
                .map(|r| ReasonCode(r.to_v3_suback().unwrap_or(0x80)))
                .collect()
        };
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: ReasonProperties::default(),
            reasons,
        }));
        for (filter, opts) in retained_for {
            self.send_retained(&filter, &opts);
        }
        self.drain_retained_backlog();
    }

    /// Queues the retained messages matching `filter` (and the current
    /// `$SYS` values) for delivery with RETAIN set.
    fn send_retained(&mut self, filter: &str, opts: &SubOptions) {
        let now = unix_secs();
        let vhost = &self.ctx.settings.vhost;
        let mut found: Vec<Publish> = Vec::new();
        for m in self
            .ctx
            .broker
            .retained_matching(vhost, &filter_to_pattern(filter))
        {
            let topic = swap_separators(&m.routing_key);
            if !filter_matches(filter, &topic) {
                continue;
            }
            let Ok(topic) = TopicName::new(topic) else {
                continue;
            };
            let mut props = convert::from_core(&m, now);
            if props.message_expiry_interval == Some(0) {
                continue;
            }
            props.subscription_identifiers.extend(opts.id);
            found.push(Publish {
                dup: false,
                qos: qos_min(convert::published_qos(&m), opts.qos),
                retain: true,
                topic,
                packet_id: None,
                properties: props,
                payload: m.body.clone(),
            });
        }
        for (topic, payload) in self.ctx.sys.values() {
            if filter_matches(filter, &topic)
                && let Ok(topic) = TopicName::new(topic)
            {
                let mut p = Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: true,
                    topic,
                    packet_id: None,
                    properties: codec::PublishProperties::default(),
                    payload,
                };
                p.properties.subscription_identifiers.extend(opts.id);
                found.push(p);
            }
        }
        let room = MAX_RETAINED_BACKLOG.saturating_sub(self.rare().retained_backlog.len());
        if found.len() > room {
            tracing::warn!(
                client_id = %self.session.client_id,
                dropped = found.len() - room,
                "mqtt retained messages over the per-connection backlog not sent"
            );
        }
        self.rare()
            .retained_backlog
            .extend(found.into_iter().take(room));
    }

    /// Sends queued retained messages while the client's window has room.
    pub(crate) fn drain_retained_backlog(&mut self) {
        while let Some(qos) = self
            .rare
            .as_ref()
            .and_then(|r| r.retained_backlog.front())
            .map(|p| p.qos)
        {
            if self.out.len() >= OUT_HIGH_WATER {
                // The rest goes after this write (the loop drains again).
                break;
            }
            if qos == QoS::AtMostOnce {
                let Some(p) = self.rare().retained_backlog.pop_front() else {
                    break;
                };
                self.count_sent(&p);
                self.write_publish(p);
                continue;
            }
            let credit = &self.session.credit;
            if credit.limit() != 0 && credit.used() >= credit.limit() {
                break;
            }
            let Some(id) = self.session.next_packet_id() else {
                break;
            };
            let Some(mut p) = self.rare().retained_backlog.pop_front() else {
                break;
            };
            p.packet_id = Some(id);
            self.count_sent(&p);
            if !self.write_publish(p.clone()) {
                continue;
            }
            self.session.credit.take();
            self.session.inflight.insert(
                id,
                Inflight {
                    publish: p,
                    source: Source::Retained,
                    message: 0,
                },
            );
        }
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in u.filters {
            let filter = f.as_str();
            if self.session.unsubscribe(filter).is_none() {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                continue;
            }
            self.session.filter_changed(filter);
            self.ctx.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            if let Some(q) = registry::shared_queue(filter) {
                if let Some(h) = self.session.rare_if().and_then(|r| r.shared.remove(&q)) {
                    self.forget_inflight_of(h.id());
                    h.cancel(true);
                }
                registry::drop_shared_queue_if_unused(&self.ctx, &q).await;
            } else {
                let pattern = filter_to_pattern(filter);
                let still_bound = self
                    .session
                    .subs
                    .by_filter
                    .keys()
                    .any(|f| split_shared(f).is_none() && filter_to_pattern(f) == pattern);
                let q = self.session.queue();
                if !still_bound && let Err(e) = self.bind(&q, filter, false).await {
                    tracing::warn!(error = %e, "mqtt unbind failed");
                }
            }
            reasons.push(ReasonCode::SUCCESS);
        }
        if self.session.is_persistent() {
            self.save_session().await;
        }
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: ReasonProperties::default(),
            reasons,
        }));
    }

    async fn on_publish(&mut self, mut p: Publish) {
        if !p.properties.subscription_identifiers.is_empty() {
            self.fail(
                ReasonCode::PROTOCOL_ERROR,
                "Subscription Identifier in a client PUBLISH [MQTT-3.3.4-6]",
            );
            return;
        }
        // Topic alias [MQTT-3.3.2-7 .. 3.3.2-12].
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.ctx.settings.topic_alias_maximum {
                self.fail(ReasonCode::TOPIC_ALIAS_INVALID, "topic alias out of range");
                return;
            }
            if p.topic.is_empty() {
                match self.rare().in_aliases.get(&alias) {
                    Some(t) => match TopicName::new(t.clone()) {
                        Ok(t) => p.topic = t,
                        Err(_) => return,
                    },
                    None => {
                        self.fail(ReasonCode::PROTOCOL_ERROR, "unknown topic alias");
                        return;
                    }
                }
            } else {
                self.rare()
                    .in_aliases
                    .insert(alias, p.topic.as_str().to_string());
            }
        }
        if p.topic.is_empty() {
            self.fail(ReasonCode::PROTOCOL_ERROR, "empty topic without an alias");
            return;
        }
        let max_levels = self.ctx.broker.limits().max_topic_levels;
        if convert::topic_levels(p.topic.as_str()) > max_levels {
            self.fail(
                ReasonCode::TOPIC_NAME_INVALID,
                &format!("topic has more than {max_levels} levels"),
            );
            return;
        }
        if p.topic.as_str().starts_with("$SYS") {
            // The broker's own tree (as Mosquitto): accepted and
            // acknowledged, not routed.
            if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
                self.session.rare_mut().incoming_qos2.insert(id);
            }
            self.ack_now(&p, ReasonCode::SUCCESS);
            return;
        }
        let packet_id = p.packet_id.unwrap_or(0);
        // This connection's unacknowledged QoS 1/2 messages: QoS 2 ids
        // from earlier connections do not count [MQTT-4.9.0-1].
        let inbound = self.qos1_pending + self.rare.as_ref().map_or(0, |r| r.qos2_here.len());
        if p.qos != QoS::AtMostOnce
            && self.version.is_v5()
            && inbound >= usize::from(self.ctx.settings.receive_maximum)
            && !(p.qos == QoS::ExactlyOnce
                && self.session.rare().incoming_qos2.contains(&packet_id))
        {
            self.fail(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded",
            );
            return;
        }
        if p.qos == QoS::ExactlyOnce && self.session.rare().incoming_qos2.contains(&packet_id) {
            // A resend of a message already published, DUP or not: PUBREC
            // again, never a second copy [MQTT-4.3.3-10].
            self.ack_now(&p, ReasonCode::SUCCESS);
            return;
        }
        self.has_published = true;
        let stats = &self.ctx.stats;
        stats.messages_received.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_received
            .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
        let msg = convert::to_core(&p, p.topic.as_str(), self.origin());
        if let Err(denied) =
            crate::connection::may_route(&mut self.access, &msg.exchange, &msg.routing_key).await
        {
            // MQTT 5 answers the publish with 0x87 and keeps the
            // connection (QoS 0 is dropped); 3.1.1 has no such answer, so
            // the connection closes, as in Mosquitto and RabbitMQ.
            if self.version.is_v5() {
                self.ack_now(&p, ReasonCode::NOT_AUTHORIZED);
            } else {
                self.fail(ReasonCode::NOT_AUTHORIZED, &denied.0);
            }
            return;
        }
        // The context, not a copy of the vhost name per message.
        let ctx = Arc::clone(&self.ctx);
        let vhost = ctx.settings.vhost.as_str();
        // `$queue/` topics name a queue: nothing to retain.
        if p.retain
            && msg.exchange == convert::TOPIC_EXCHANGE
            && let Err(e) = self.ctx.broker.set_retained(vhost, msg.clone()).await
        {
            // Never acknowledge a retained message that is not stored.
            tracing::warn!(error = %e, "mqtt retained message not stored");
            self.fail(ReasonCode::UNSPECIFIED_ERROR, "retained message not stored");
            return;
        }
        let published = if p.qos == QoS::ExactlyOnce {
            self.session.rare_mut().incoming_qos2.insert(packet_id);
            self.rare().qos2_here.insert(packet_id);
            let mut w = StateWrites::new();
            if self.session.is_persistent() {
                w.put(
                    NAMESPACE,
                    &incoming_key(&self.session.client_id, packet_id),
                    b"",
                );
            }
            self.ctx.broker.publish_with_state(vhost, msg, w).await
        } else {
            self.ctx.broker.publish(vhost, msg).await
        };
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "mqtt publish failed");
                if p.qos == QoS::ExactlyOnce
                    && let Some(r) = self.session.rare_if()
                {
                    r.incoming_qos2.remove(&packet_id);
                }
                self.fail(ReasonCode::UNSPECIFIED_ERROR, "publish failed");
                return;
            }
        };
        if p.qos == QoS::AtMostOnce {
            return;
        }
        let routed = published.routed;
        if routed > 0 {
            self.routed = self.routed.saturating_add(1);
        }
        let v5 = self.version.is_v5();
        let qos = p.qos;
        if qos == QoS::AtLeastOnce {
            self.qos1_pending += 1;
        }
        let ack = move |confirmed: Result<bool, junction_core::CoreError>| {
            let reason = match confirmed {
                Ok(true) if routed == 0 && v5 => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                Ok(true) => ReasonCode::SUCCESS,
                Ok(false) => ReasonCode::QUOTA_EXCEEDED,
                Err(_) => ReasonCode::UNSPECIFIED_ERROR,
            };
            let mut ack = Ack::new(packet_id);
            ack.reason = reason;
            if qos == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            }
        };
        // Nothing stored and no earlier ack still waiting for the disk:
        // acknowledged now, in the same write as its neighbours (acks go
        // out in the order of the publishes [MQTT-4.6.0-2]).
        if self.confirms.is_empty()
            && let Some(ok) = published.settled()
        {
            self.on_confirm(ack(Ok(ok)));
            return;
        }
        self.confirms
            .push_back(Box::pin(async move { ack(published.confirmed().await) }));
    }

    /// A publish receipt resolved: send its PUBACK / PUBREC. A refusal is
    /// a reason code in MQTT 5; a 3.1.1 ack cannot carry one, so the
    /// connection closes instead (the client resends after reconnecting).
    pub(crate) fn on_confirm(&mut self, ack: Packet) {
        let (id, reason) = match &ack {
            Packet::PubAck(a) => {
                self.qos1_pending = self.qos1_pending.saturating_sub(1);
                (a.packet_id, a.reason)
            }
            Packet::PubRec(a) => (a.packet_id, a.reason),
            _ => (0, ReasonCode::SUCCESS),
        };
        if reason.is_error() {
            if matches!(ack, Packet::PubRec(_)) {
                // A refused QoS 2 message frees its packet id [MQTT-4.3.3].
                if let Some(r) = self.session.rare_if() {
                    r.incoming_qos2.remove(&id);
                }
                if let Some(r) = self.rare.as_mut() {
                    r.qos2_here.remove(&id);
                }
                self.forget_incoming(id);
            }
            if !self.version.is_v5() {
                self.fail(reason, "publish refused");
                return;
            }
        }
        self.send(ack);
    }

    /// Deletes the stored record of an incoming QoS 2 packet id.
    fn forget_incoming(&self, id: u16) {
        if self.session.is_persistent() {
            let mut w = StateWrites::new();
            w.delete(NAMESPACE, &incoming_key(&self.session.client_id, id));
            self.ctx.broker.write_state_soon(w);
        }
    }

    /// Acknowledges a publish in order with those still awaiting the disk.
    fn ack_now(&mut self, p: &Publish, reason: ReasonCode) {
        let Some(id) = p.packet_id else {
            return;
        };
        let mut ack = Ack::new(id);
        ack.reason = reason;
        let packet = match p.qos {
            QoS::AtLeastOnce => {
                self.qos1_pending += 1;
                Packet::PubAck(ack)
            }
            _ => Packet::PubRec(ack),
        };
        self.confirms
            .push_back(Box::pin(std::future::ready(packet)));
    }

    fn on_pubrel(&mut self, id: u16) {
        let mut ack = Ack::new(id);
        if let Some(r) = self.rare.as_mut() {
            r.qos2_here.remove(&id);
        }
        if self
            .session
            .rare_if()
            .is_some_and(|r| r.incoming_qos2.remove(&id))
        {
            if self.session.is_persistent() {
                // PUBCOMP only once the id's release is synced: the client
                // may reuse the id right after, and a record left by a
                // crash or power cut would swallow that new message as a
                // resend.
                let mut w = StateWrites::new();
                w.delete(NAMESPACE, &incoming_key(&self.session.client_id, id));
                let synced = self.ctx.broker.write_state_synced(w);
                self.confirms.push_back(Box::pin(async move {
                    if let Err(e) = synced.await {
                        tracing::error!(error = %e, "mqtt QoS 2 release not stored");
                    }
                    Packet::PubComp(ack)
                }));
                return;
            }
        } else {
            ack.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send(Packet::PubComp(ack));
    }

    /// Settles an outgoing message the client acknowledged (or refused).
    fn settle(&mut self, source: Source) {
        match source {
            Source::Queue(consumer, _) if self.session.is_no_ack(consumer) => {}
            Source::Queue(consumer, tag) => {
                if let Some(h) = self.session.consumer_handle(consumer)
                    && let Err(e) = h.settle(tag, Settle::Ack)
                {
                    tracing::debug!(error = %e, "mqtt settle failed");
                }
            }
            Source::Retained => {
                self.session.credit.give_back();
                self.pump();
            }
        }
    }

    /// Credit came back outside a queue's knowledge: let queues deliver.
    pub(crate) fn pump(&mut self) {
        if let Some(c) = &self.session.consumer {
            c.pump();
        }
        for c in self.session.rare().shared.values() {
            c.pump();
        }
        self.drain_retained_backlog();
    }

    fn on_puback(&mut self, id: u16) {
        match self.session.inflight.get(&id) {
            Some(f) if f.publish.qos == QoS::AtLeastOnce => {}
            _ => return,
        }
        if let Some(f) = self.session.inflight.remove(&id) {
            self.settle(f.source);
            self.record_outgoing(id, None);
            self.drain_retained_backlog();
        }
    }

    fn on_pubrec(&mut self, a: Ack) {
        let id = a.packet_id;
        match self.session.inflight.get(&id) {
            Some(f) if f.publish.qos == QoS::ExactlyOnce => {}
            _ => {
                let mut rel = Ack::new(id);
                if !self.session.rare().pubrel_pending.contains(&id) {
                    rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(Packet::PubRel(rel));
                return;
            }
        }
        let Some(f) = self.session.inflight.remove(&id) else {
            return;
        };
        if a.reason.is_error() {
            self.settle(f.source);
            self.record_outgoing(id, None);
            return;
        }
        // The client owns the message now: the record says so first (it is
        // queued for the store before the queue entry's removal, and the
        // store applies writes in order), so after a crash we owe a PUBREL,
        // never a second PUBLISH.
        let applied = self.session.is_persistent().then(|| {
            self.ctx.broker.write_state_applied(outgoing_write(
                &self.session.client_id,
                id,
                Some((f.message, true)),
            ))
        });
        // The message keeps its slot in the window until PUBCOMP: taken
        // again before the entry is settled, or the queue would hand it to
        // the next message at once [MQTT-4.9.0-2].
        if let Source::Queue(..) = f.source {
            self.session.credit.take();
            self.settle(f.source);
        }
        self.session.rare_mut().pubrel_pending.insert(id);
        match applied {
            // PUBREL once the "released" record is in the store.
            Some(applied) => self.confirms.push_back(Box::pin(async move {
                let _ = applied.await;
                Packet::PubRel(Ack::new(id))
            })),
            None => self.send(Packet::PubRel(Ack::new(id))),
        }
    }

    fn on_pubcomp(&mut self, id: u16) {
        if !self
            .session
            .rare_if()
            .is_some_and(|r| r.pubrel_pending.remove(&id))
        {
            return;
        }
        self.record_outgoing(id, None);
        self.session.credit.give_back();
        self.pump();
    }

    pub(crate) fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(d) => self.deliver(d),
            ConsumerEvent::Cancelled(id) => {
                // The queue was deleted (by an AMQP client, say), or, in
                // a cluster, its node or its leader changed: what was in
                // flight from it can no longer be settled.
                self.forget_inflight_of(id);
                let mut lost = None;
                if self.session.consumer.as_ref().is_some_and(|c| c.id() == id) {
                    self.session.consumer = None;
                    lost = Some(self.session.queue());
                }
                if let Some(r) = self.session.rare_if() {
                    r.shared.retain(|q, c| {
                        let gone = c.id() == id;
                        if gone {
                            lost = Some(q.clone());
                        }
                        !gone
                    });
                }
                // A queue still there (another node serves it now, or the
                // link to its node came back) is consumed again; a deleted
                // one is not declared again behind the deleter's back.
                if let Some(q) = lost
                    && self.ctx.broker.knows_queue(&self.ctx.settings.vhost, &q)
                {
                    let r = self.rare();
                    if r.reattach_due.is_none() {
                        let now = tokio::time::Instant::now();
                        r.reattach_due = Some(
                            r.reattached_at
                                .map_or(now, |at| (at + REATTACH_EVERY).max(now)),
                        );
                    }
                }
            }
        }
    }

    /// What a delivery matches: the session's own subscriptions, or the
    /// shared subscription whose queue it came from.
    fn match_delivery(&mut self, d: &Delivery, topic: &str) -> Option<Match> {
        if self.session.is_own(d.consumer) {
            let origin = d.message.origin;
            let own = origin.protocol == junction_core::Protocol::Mqtt
                && origin.connection == self.guard.id();
            return self.session.matching(&d.message.routing_key, topic, own);
        }
        let (filter, o) = self.session.shared_sub_for(d.consumer)?;
        filter_matches(filter, topic).then(|| Match {
            qos: o.qos,
            ids: o.id.into_iter().collect(),
            retain_as_published: o.retain_as_published,
        })
    }

    fn deliver(&mut self, d: Delivery) {
        let topic = swap_separators(&d.message.routing_key);
        // Cheapest checks first: most refusals are a filter mismatch.
        let m = self.match_delivery(&d, &topic);
        let now = d.message.properties.expiration.is_some().then(unix_secs);
        let expired = now.is_some_and(|n| convert::remaining_expiry(&d.message, n) == Some(0));
        let (Some(m), false) = (m, expired) else {
            self.settle(Source::Queue(d.consumer, d.tag));
            return;
        };
        let Ok(topic_name) = TopicName::new(topic) else {
            // An AMQP or STOMP routing key MQTT cannot name: counted in
            // $SYS, not sent.
            self.ctx
                .stats
                .messages_undeliverable
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %d.message.routing_key, "mqtt: routing key is no topic name; skipped");
            self.settle(Source::Queue(d.consumer, d.tag));
            return;
        };
        let qos = qos_min(convert::published_qos(&d.message), m.qos);
        let mut properties = if self.version.is_v5() {
            convert::from_core(&d.message, now.unwrap_or(0))
        } else {
            codec::PublishProperties::default()
        };
        properties.subscription_identifiers = m.ids;
        let mut p = Publish {
            // DUP marks our own resends only (resend_inflight): a message
            // back in the queue (a restart, a shared subscriber gone) is a
            // first attempt for this client.
            dup: false,
            qos,
            retain: m.retain_as_published && convert::published_retain(&d.message),
            topic: topic_name,
            packet_id: None,
            properties,
            payload: d.message.body.clone(),
        };
        let message = d.message.id.0;
        // Sent before a restart and not acknowledged: the same packet id
        // again, flagged as a resend (a QoS 2 client then knows it).
        let recovered = self
            .session
            .rare_if()
            .and_then(|r| r.recovered.remove(&message));
        if qos == QoS::AtMostOnce {
            if let Some(id) = recovered {
                self.record_outgoing(id, None);
            }
            self.count_sent(&p);
            self.settle(Source::Queue(d.consumer, d.tag));
            self.queue_outgoing(p, false);
            return;
        }
        let id = match recovered {
            Some(id) => {
                p.dup = true;
                id
            }
            None => match self.session.next_packet_id() {
                Some(id) => id,
                None => {
                    // Back to the queue, not stranded in a parked session.
                    if let Some(h) = self.session.consumer_handle(d.consumer) {
                        let _ = h.settle(d.tag, Settle::Requeue);
                    }
                    self.fail(ReasonCode::QUOTA_EXCEEDED, "no free packet identifier");
                    return;
                }
            },
        };
        p.packet_id = Some(id);
        self.count_sent(&p);
        self.session.inflight.insert(
            id,
            Inflight {
                publish: p.clone(),
                source: Source::Queue(d.consumer, d.tag),
                message,
            },
        );
        if self.session.is_persistent() && qos == QoS::ExactlyOnce {
            // The record first, then the PUBLISH: after a crash the message
            // goes to this client again under this id, never under a new
            // one it would take for a second message.
            let w = outgoing_write(&self.session.client_id, id, Some((message, false)));
            let applied = self.ctx.broker.write_state_applied(w);
            self.rare().outbox.push_back(Box::pin(async move {
                let _ = applied.await;
                Outgoing {
                    publish: p,
                    inflight: true,
                }
            }));
        } else {
            self.record_outgoing(id, Some((message, false)));
            self.queue_outgoing(p, true);
        }
    }

    /// Sends `p` now, or after the deliveries still waiting for their
    /// store records (so order holds).
    fn queue_outgoing(&mut self, publish: Publish, inflight: bool) {
        if self.outbox_is_empty() {
            self.send_outgoing(Outgoing { publish, inflight });
        } else {
            self.rare()
                .outbox
                .push_back(Box::pin(std::future::ready(Outgoing { publish, inflight })));
        }
    }

    /// Writes a delivery; one too large for the client is not sent
    /// [MQTT-3.1.2-25] and, if in flight, settled as delivered.
    pub(crate) fn send_outgoing(&mut self, out: Outgoing) {
        let id = out.publish.packet_id;
        if self.write_publish(out.publish) || !out.inflight {
            return;
        }
        if let Some(id) = id
            && let Some(f) = self.session.inflight.remove(&id)
        {
            self.settle(f.source);
            self.record_outgoing(id, None);
        }
    }

    /// Keeps (Some) or drops (None) the record of an outgoing message of a
    /// persistent session, so a restart resends it with its packet id.
    /// Written without waiting for the disk, in order with the queue's own
    /// writes (see docs/mqtt.md: a crash of the process keeps it, a power
    /// cut may not).
    fn record_outgoing(&self, id: u16, state: Option<(u64, bool)>) {
        if !self.session.is_persistent() {
            return;
        }
        let w = outgoing_write(&self.session.client_id, id, state);
        self.ctx.broker.write_state_soon(w);
    }

    /// Forgets what was in flight from `consumer` (its queue is gone, or a
    /// shared subscription ended), records included.
    fn forget_inflight_of(&mut self, consumer: junction_core::ConsumerId) {
        for id in self.session.drop_inflight_of(consumer) {
            self.record_outgoing(id, None);
        }
    }

    fn count_sent(&self, p: &Publish) {
        let stats = &self.ctx.stats;
        stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_sent
            .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
    }

    /// Encodes a PUBLISH for the client, with a topic alias where one is
    /// set or can be assigned. False when it is larger than the client's
    /// Maximum Packet Size: it is not sent [MQTT-3.1.2-25].
    pub(crate) fn write_publish(&mut self, mut p: Publish) -> bool {
        let mut new_alias = None;
        if !self.version.is_v5() {
            p.properties = codec::PublishProperties::default();
        } else if self.client_alias_max > 0 {
            let topic = p.topic.as_str().to_string();
            let alias_max = self.client_alias_max;
            let aliases = &mut self.rare().out_aliases;
            match aliases.get(&topic) {
                Some(&a) => {
                    p.properties.topic_alias = Some(a);
                    p.topic = TopicName::empty();
                }
                None if aliases.len() < usize::from(alias_max) => {
                    let a = aliases.len() as u16 + 1;
                    aliases.insert(topic.clone(), a);
                    p.properties.topic_alias = Some(a);
                    new_alias = Some(topic);
                }
                None => {}
            }
        }
        let before = self.out.len();
        self.send(Packet::Publish(p));
        if self.out.len() - before > self.client_max_packet {
            self.out.truncate(before);
            if let Some(t) = new_alias {
                // The client never saw it: the alias stays free.
                self.rare().out_aliases.remove(&t);
            }
            return false;
        }
        true
    }
}
